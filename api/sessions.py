"""Login sessions in Redis, and rotation of their opaque refresh tokens.

A refresh token is `"{sid}.{secret}"`. Redis keeps, per session, a hash `session:{sid}` (user id, SHA-256 of
the current secret, creation time) and a set `session:{sid}:used` of the hashes already rotated away.
Presenting the current secret rotates it; presenting a used one means the token leaked, so the whole
session (every token derived from that login) is revoked. Rotation is one Lua script, so two concurrent
refreshes with the same token cannot both win. Access tokens name their session (`sid`): deleting the
session revokes them too. A set `user-sessions:{user id}` lists a user's sessions, so a password change can
end all but the caller's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

_SID = re.compile(r"^[0-9a-f]{32}$")
_MAX_SECRET_LENGTH = 128

_ROTATE = """
local current = redis.call('HGET', KEYS[1], 'refresh_hash')
if not current then
  return {'unknown', ''}
end
local user_id = redis.call('HGET', KEYS[1], 'user_id')
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'rotated_at', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  -- the user's session list outlives each of their sessions (single-node Redis: a key built in the script)
  redis.call('EXPIRE', 'user-sessions:' .. user_id, ARGV[3])
  return {'rotated', user_id}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'reused', user_id}
end
return {'unknown', ''}
"""


class RefreshOutcome(StrEnum):
    ROTATED = "rotated"
    REUSED = "reused"  # an already-rotated token came back: the session was revoked
    UNKNOWN = "unknown"  # malformed, expired, logged out, or never issued


@dataclass(frozen=True)
class NewSession:
    session_id: str
    refresh_token: str


@dataclass(frozen=True)
class Rotation:
    outcome: RefreshOutcome
    session_id: str | None = None
    user_id: uuid.UUID | None = None  # ROTATED, and REUSED (whose session was revoked)
    refresh_token: str | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _keys(session_id: str) -> tuple[str, str]:
    return f"session:{session_id}", f"session:{session_id}:used"


def _user_key(user_id: uuid.UUID) -> str:
    return f"user-sessions:{user_id}"


def parse_refresh_token(token: str) -> tuple[str, str] | None:
    session_id, dot, secret = token.partition(".")
    if not dot or not _SID.match(session_id) or not secret or len(secret) > _MAX_SECRET_LENGTH:
        return None
    return session_id, secret


class SessionStore:
    def __init__(self, redis: Redis, refresh_ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = refresh_ttl_seconds
        self._rotate = redis.register_script(_ROTATE)

    def queue_create(self, pipe: Pipeline, user_id: uuid.UUID) -> NewSession:
        """A new session, queued on the caller's MULTI pipeline (it exists once that executes; the login's
        pipeline also settles its throttle)."""
        session_id = uuid.uuid4().hex
        secret = secrets.token_urlsafe(32)
        key, _ = _keys(session_id)
        pipe.hset(
            key,
            mapping={"user_id": str(user_id), "refresh_hash": _hash(secret), "created_at": str(int(time.time()))},
        )
        pipe.expire(key, self.ttl)
        pipe.sadd(_user_key(user_id), session_id)
        pipe.expire(_user_key(user_id), self.ttl)
        return NewSession(session_id, f"{session_id}.{secret}")

    async def user_of(self, session_id: str) -> uuid.UUID | None:
        """The session's user, or None when the session is gone (logged out, revoked, expired)."""
        if not _SID.match(session_id):
            return None
        user_id = await self.redis.hget(_keys(session_id)[0], "user_id")
        if not user_id:
            return None
        assert isinstance(user_id, str), "SessionStore needs a Redis client with decode_responses=True"
        return uuid.UUID(user_id)

    async def rotate(self, refresh_token: str) -> Rotation:
        parsed = parse_refresh_token(refresh_token)
        if parsed is None:
            return Rotation(RefreshOutcome.UNKNOWN)
        session_id, secret = parsed
        new_secret = secrets.token_urlsafe(32)
        outcome, user_id = await self._rotate(
            keys=list(_keys(session_id)),
            args=[_hash(secret), _hash(new_secret), self.ttl, int(time.time())],
        )
        result = RefreshOutcome(outcome)
        if result is RefreshOutcome.REUSED:
            return Rotation(result, session_id=session_id, user_id=uuid.UUID(user_id) if user_id else None)
        if result is not RefreshOutcome.ROTATED:
            return Rotation(result, session_id=session_id)
        return Rotation(
            result, session_id=session_id, user_id=uuid.UUID(user_id), refresh_token=f"{session_id}.{new_secret}"
        )

    async def revoke(self, session_id: str) -> None:
        await self.redis.delete(*_keys(session_id))

    async def revoke_others(self, user_id: uuid.UUID, keep: str) -> int:
        """End every session of the user but `keep` (their access and refresh tokens stop working); how many."""
        members: set[str] = await self.redis.smembers(_user_key(user_id))  # type: ignore[assignment]  # decoded
        others = [sid for sid in members if sid != keep]
        if not others:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid in others:
                pipe.delete(*_keys(sid))
            pipe.srem(_user_key(user_id), *others)
            await pipe.execute()
        return len(others)

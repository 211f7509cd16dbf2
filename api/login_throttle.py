"""Failed-login throttling that slows guessing without handing attackers a lockout button.

Shared by every API replica through Redis. Each counter is a sorted set of recent failure times, keyed by
SHA-256 digests (never an email, address or cookie in clear). Which counters an attempt is checked against
and counted in depends on who asks (OWASP, "Slow down online guessing attacks with device cookies"):

- a client presenting a valid **device cookie** for the account (set by an earlier successful login there):
  only that cookie's own counter (`max_failures`), so failures from anywhere else never lock it out, while a
  stolen cookie still gets only `max_failures` guesses per window;
- any other client: the (account, client address) counter (`max_failures`), the client address counter across
  all accounts, and the account's counter for cookie-less clients (both `CROSS_LIMIT_FACTOR × max_failures`), so
  one address cannot lock an account for everyone else, and a guesser spread over many addresses is still
  slowed to the account-wide limit.

Delays are progressive: a counter at its limit allows the next attempt `BASE_DELAY_SECONDS` after its latest
failure, and every further failure doubles that delay, up to the window. The check runs before the password is
verified, so a throttled attempt costs no argon2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

CROSS_LIMIT_FACTOR = 4  # the per-address and account-wide (cookie-less) limits, in units of max_failures
BASE_DELAY_SECONDS = 60  # the wait after reaching a limit; doubles with each further failure, up to the window

DEVICE_COOKIE = "prognet_device"
DEVICE_COOKIE_MAX_AGE = 365 * 24 * 3600


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _email(email: str) -> str:
    return email.strip().lower()


def account_key(email: str) -> str:
    """The account's counter of failures from clients without its device cookie."""
    return "login:failures:account:" + _digest(_email(email))


def account_address_key(email: str, address: str) -> str:
    return "login:failures:account-address:" + _digest(_email(email) + "\n" + address)


def address_key(address: str) -> str:
    return "login:failures:address:" + _digest(address)


def device_key(device_id: str) -> str:
    return "login:failures:device:" + _digest(device_id)


class DeviceCookies:
    """`<device id>.<HMAC(key, account email + device id)>`: valid only for the account it was issued to."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, email: str, device_id: str) -> str:
        mac = hmac.new(self._key, f"{_email(email)}\n{device_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, email: str) -> str:
        device_id = secrets.token_urlsafe(16)
        return f"{device_id}.{self._mac(email, device_id)}"

    def device_of(self, cookie: str | None, email: str) -> str | None:
        """The device id if `cookie` is a valid device cookie for this account, else None."""
        if not cookie or cookie.count(".") != 1:
            return None
        device_id, mac = cookie.split(".")
        return device_id if device_id and hmac.compare_digest(mac, self._mac(email, device_id)) else None


# Atomically, for each counter KEYS[i] with limit ARGV[4 + i]: forget failures older than the window; if any
# counter is at its limit and its progressive delay since its latest failure has not passed, answer the longest
# remaining wait (nothing recorded); else record this attempt in every counter, in advance.
_RESERVE = """
local now, window, base, attempt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local wait = 0
for i, key in ipairs(KEYS) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local limit = tonumber(ARGV[4 + i])
    if count >= limit then
        local latest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
        local delay = math.min(window, base * 2 ^ (count - limit))
        wait = math.max(wait, latest + delay - now)
    end
end
if wait > 0 then
    return tostring(wait)
end
for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, attempt)
    redis.call('EXPIRE', key, window)
end
return false
"""


def lock_key(email: str, address: str) -> str:
    return "login:locked:" + _digest(_email(email) + "\n" + address)


async def lock_noticed(redis: Redis, email: str, address: str, retry_after: int) -> bool:
    """True for the first throttled attempt of a lock period (per account and address), so a locked account
    is one audit event, not one per hammered attempt."""
    return bool(await redis.set(lock_key(email, address), "1", nx=True, ex=max(1, retry_after)))


@dataclass(frozen=True)
class Attempt:
    """A reserved failure slot: the counters it was recorded in."""

    id: str
    keys: tuple[str, ...]


class LoginThrottle:
    """Each login attempt reserves a failure slot in its counters *before* the password is checked, atomically,
    so a burst of concurrent guesses cannot all pass the check while the first ones are still being verified.
    A wrong password keeps its slot; anything else (right password, a server-side error) releases it."""

    def __init__(self, redis: Redis, max_failures: int, window_seconds: int) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.window = window_seconds
        self._reserve = redis.register_script(_RESERVE)

    def _counters(self, email: str, address: str, device_id: str | None) -> dict[str, int]:
        if device_id is not None:
            return {device_key(device_id): self.max_failures}
        cross = CROSS_LIMIT_FACTOR * self.max_failures
        return {
            account_address_key(email, address): self.max_failures,
            address_key(address): cross,
            account_key(email): cross,
        }

    async def reserve(self, email: str, address: str, device_id: str | None) -> tuple[Attempt | None, int | None]:
        """(attempt, None) when the attempt may go ahead; (None, seconds to wait) when it is throttled."""
        counters = self._counters(email, address, device_id)
        now = time.time()
        attempt = Attempt(f"{now:.6f}:{uuid.uuid4().hex[:8]}", tuple(counters))
        wait = await self._reserve(
            keys=list(counters), args=[now, self.window, BASE_DELAY_SECONDS, attempt.id, *counters.values()]
        )
        if wait is None:
            return attempt, None
        return None, max(1, math.ceil(float(wait)))

    async def release(self, attempt: Attempt) -> None:
        """The attempt was not a failure of the caller's (right password, or the server failed)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in attempt.keys:
                pipe.zrem(key, attempt.id)
            await pipe.execute()

    def queue_success(self, pipe: Pipeline, attempt: Attempt, email: str, address: str, device_id: str | None) -> None:
        """The password was right: this client's own counters start over. The account-wide and per-address
        counters only lose this attempt, so a distributed guesser gains nothing from the owner's logins.
        Queued on the login's MULTI pipeline, which also creates its session: one round trip, one step."""
        own = [account_address_key(email, address)] + ([device_key(device_id)] if device_id else [])
        for key in attempt.keys:
            pipe.zrem(key, attempt.id)
        pipe.delete(*own)

"""Failed-login throttling per account, shared by every API replica through Redis.

A sorted set per account (keyed by the SHA-256 of the lower-cased email, never the email itself) holds the
times of recent failures; once `max_failures` lie inside the window the account is locked until the oldest
of them ages out. The check runs before the password is verified, so a locked account costs no argon2.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid

from redis.asyncio import Redis


def account_key(email: str) -> str:
    return "login:failures:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


# Atomically: forget failures older than the window; if the account already has max_failures inside it,
# answer the oldest relevant failure's time (locked); else record this attempt as a failure in advance.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local failures = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local count = #failures / 2
local max = tonumber(ARGV[3])
if count >= max then
    return failures[(count - max) * 2 + 2]
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return false
"""


class LoginThrottle:
    """Each login attempt reserves a failure slot *before* the password is checked, atomically, so a burst
    of concurrent guesses cannot all pass the check while the first ones are still being verified. A wrong
    password keeps its slot; a right one releases it (or clears the account on success)."""

    def __init__(self, redis: Redis, max_failures: int, window_seconds: int) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.window = window_seconds
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, email: str) -> tuple[str | None, int | None]:
        """(attempt id, None) when the attempt may go ahead; (None, seconds to wait) when the account is locked."""
        now, attempt = time.time(), f"{time.time():.6f}:{uuid.uuid4().hex[:8]}"
        unlocking = await self._reserve(keys=[account_key(email)], args=[now, self.window, self.max_failures, attempt])
        if unlocking is None:
            return attempt, None
        return None, max(1, math.ceil(float(unlocking) + self.window - now))

    async def release(self, email: str, attempt: str) -> None:
        """The password was right (but the login refused for another reason): not a failure."""
        await self.redis.zrem(account_key(email), attempt)

    async def clear(self, email: str) -> None:
        await self.redis.delete(account_key(email))

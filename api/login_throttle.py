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


class LoginThrottle:
    def __init__(self, redis: Redis, max_failures: int, window_seconds: int) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.window = window_seconds

    async def retry_after(self, email: str) -> int | None:
        """Seconds until the account may try again, or None when it is not locked."""
        key, now = account_key(email), time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - self.window)
            pipe.zrange(key, 0, -1, withscores=True)
            _, failures = await pipe.execute()
        if len(failures) < self.max_failures:
            return None
        # Unlocks when enough of the failures have aged out to leave max_failures - 1 in the window.
        unlocking = failures[len(failures) - self.max_failures][1]
        return max(1, math.ceil(unlocking + self.window - now))

    async def record_failure(self, email: str) -> None:
        key, now = account_key(email), time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {f"{now:.6f}:{uuid.uuid4().hex[:8]}": now})
            pipe.zremrangebyscore(key, "-inf", now - self.window)
            pipe.expire(key, self.window)
            await pipe.execute()

    async def clear(self, email: str) -> None:
        await self.redis.delete(account_key(email))

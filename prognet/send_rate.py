"""A send-rate limit shared by every worker: one Redis key hands out send slots `1 / rate` seconds apart.

Each caller reserves the next free slot (a GCRA-style "theoretical arrival time" kept on Redis's own clock, in
one Lua script, so concurrent workers never get the same slot) and waits until it; so at most `rate` sends
start in any second, whatever the number of workers. A slot is never given back: a caller that dies or gives
up wastes it (the rate falls, it never rises).

A slot far ahead (a burst queued behind the limit) is not waited for inside one send attempt: the caller gets
the slot as a ticket (`SendSlot.slot_us`) and presents it again when it comes back near that time (the email
workflow sleeps on a durable timer meanwhile). A ticket still ahead of Redis's clock, or behind it by less than
`LATE_GRACE_SECONDS` (its holder's timer fired late on a busy worker), is honoured: sent at once; one later than
that is not: the caller gets a fresh slot, so late holders add at most half a second's worth of sends to any
second (a send starts within [slot, slot + grace]: at most 1.5 × rate + 1 starts in any one second).

If Redis is unreachable, `reserve` raises (redis.exceptions.RedisError): the caller must not send unlimited.

No library fitted: limits' windows and pyrate-limiter's buckets answer "allowed or not" (a queue of waiters
would poll), redis-limiters' token bucket reserves but its slots cannot be held across a workflow timer.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

KEY = "send-rate:email"  # one global key: the limit holds across every worker and tenant
LATE_GRACE_SECONDS = 0.5

# KEYS[1]: next free slot (µs on Redis's clock). ARGV: interval_us, held ticket (µs, 0 = none), grace_us.
# Returns {slot, now}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local held = tonumber(ARGV[2])
if held > 0 and held + tonumber(ARGV[3]) >= now then return {held, now} end
local interval = tonumber(ARGV[1])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local ttl_ms = math.floor((slot + interval - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX', string.format('%d', ttl_ms))
return {slot, now}
"""


@dataclass(frozen=True)
class SendSlot:
    slot_us: int  # when the send may start, µs since the epoch on Redis's clock
    now_us: int  # Redis's clock when the slot was given

    @property
    def wait_seconds(self) -> float:
        return max(self.slot_us - self.now_us, 0) / 1_000_000


class SendRateLimiter:
    def __init__(self, redis: Redis, per_second: float, key: str = KEY) -> None:
        if per_second <= 0:
            raise ValueError("the send rate must be positive")
        self.redis = redis
        self.key = key
        self.interval_us = max(int(1_000_000 / per_second), 1)
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, held_slot_us: int | None = None) -> SendSlot:
        """The caller's send slot: its held ticket unless that is more than the grace late, else the next free one."""
        grace_us = int(LATE_GRACE_SECONDS * 1_000_000)
        slot, now = await self._reserve(keys=[self.key], args=[self.interval_us, held_slot_us or 0, grace_us])
        return SendSlot(slot_us=int(slot), now_us=int(now))

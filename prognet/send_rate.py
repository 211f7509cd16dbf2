"""A send-rate limit shared by every worker: a token bucket in one Redis key, checked at the moment of sending.

The bucket holds at most `capacity` tokens (a quarter of a second's worth of sends, at least one) and refills at
`rate` tokens a second on Redis's own clock (`TIME` inside one Lua script, so every worker sees one clock and
one bucket). A send starts only right after `acquire` took a token from it. Nothing is reserved ahead: a caller
that gets no token is told how long to wait and must ask again after waking. So however many callers wake
together (a starved worker's stalled event loop, timers firing late), at most `capacity + rate × t` sends are
granted in any window of `t` seconds, across every worker process.

Who asks first is not who sends first, so a line is kept beside the bucket as a hint (never a permission): a
caller that gets no token is handed a ticket, a place in line `1/rate` s after the previous one, and comes back
at its ticket's time. While a line is waiting, a newcomer without a ticket queues behind it instead of taking
the token the line was promised; a ticket whose time has come competes for tokens like any other (a late
holder is never sent to the back, and never sent without a token). A ticket lost with its holder only wastes
its place: tokens never build up beyond `capacity`, so the rate falls, it never rises.

If Redis is unreachable, `acquire` raises (redis.exceptions.RedisError): the caller must not send unlimited.

Why not a library: limits' strategies (moving window, token-less windows) answer "allowed or not" on the
caller's clock with whole-second windows, and have no line, so a burst of waiters would poll Redis in a herd;
the bucket and the line must change in one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

KEY = "send-rate:email"  # one global key: the limit holds across every worker and tenant
CAPACITY_SECONDS = 0.25  # the bucket holds this many seconds of sends (at least one token)

# KEYS[1]: a hash {tokens, at (µs of the last refill), line (µs: the next free place in line)}.
# ARGV: rate (tokens/s), capacity, held ticket (µs, 0 = none).
# Returns {granted (0/1), ticket (µs, 0 = none), retry_at (µs), now (µs)}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, capacity, ticket = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = math.ceil(1000000 / rate)
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'line')
local tokens = tonumber(s[1]) or capacity
local at = tonumber(s[2]) or now
local line = tonumber(s[3]) or 0
if now > at then tokens = math.min(capacity, tokens + (now - at) * rate / 1000000) end
local granted, retry_at = 0, now
-- a ticket whose time has come, or a newcomer while nobody waits in line, may take a token
local eligible = (ticket > 0 and ticket <= now) or (ticket == 0 and line <= now)
if eligible and tokens >= 1 then
  tokens = tokens - 1
  granted, ticket = 1, 0
else
  local token_at = now + math.ceil((1 - math.min(tokens, 1)) * 1000000 / rate)
  if ticket == 0 then
    ticket = math.max(line, token_at)  -- a place in line: 1/rate after the one before
    line = ticket + interval
    retry_at = ticket
  elseif ticket > now then
    retry_at = ticket  -- back too early: wait for its place
  else
    retry_at = token_at  -- its time has come but the bucket is empty: ask again when a token is due
  end
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', math.max(now, at), 'line', line)
redis.call('PEXPIRE', KEYS[1], math.floor(math.max(line - now, 0) / 1000) + 60000)
return {granted, ticket, retry_at, now}
"""


@dataclass(frozen=True)
class Acquired:
    granted: bool  # a token was taken: send now
    ticket_us: int | None  # not granted: the caller's place in line (µs on Redis's clock), to present again
    retry_at_us: int  # not granted: when to ask again
    now_us: int  # Redis's clock at the answer

    @property
    def wait_seconds(self) -> float:
        return max(self.retry_at_us - self.now_us, 0) / 1_000_000


class SendRateLimiter:
    def __init__(self, redis: Redis, per_second: float, key: str = KEY) -> None:
        if per_second <= 0:
            raise ValueError("the send rate must be positive")
        self.redis = redis
        self.key = key
        self.per_second = per_second
        self.capacity = max(1.0, per_second * CAPACITY_SECONDS)
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, ticket_us: int | None = None) -> Acquired:
        """Take a token now if one is free to the caller; else its ticket and when to ask again (never a promise:
        the caller must ask again, after waking, before it sends)."""
        granted, ticket, retry_at, now = await self._acquire(
            keys=[self.key], args=[self.per_second, self.capacity, ticket_us or 0]
        )
        return Acquired(
            granted=bool(granted), ticket_us=int(ticket) or None, retry_at_us=int(retry_at), now_us=int(now)
        )

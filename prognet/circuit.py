"""A circuit breaker whose state lives in Redis, so every worker process agrees on it.

closed ──(failure rate ≥ threshold over the sliding window, with at least `min_calls` calls)──▶ open
open ──(cool-down over: the next call becomes a probe)──▶ half_open (at most `half_open_probes` calls at once)
half_open ──(a probe succeeds)──▶ closed;  half_open ──(a probe fails)──▶ open (a new cool-down)

Every transition is one Lua script (atomic across processes) on Redis's own clock, so exactly one caller
sees it happen and reports it (`on_transition`). Only failures that say "the service is down" count
(connection errors, timeouts, 5xx, 429): the caller decides, and records anything else as a success, since
the service answered. If Redis itself is unreachable the breaker lets calls through (fails open): it exists
to protect the external service, not to add an outage of its own.

No library fitted: pybreaker and aiobreaker count consecutive failures in synchronous Redis calls, purgatory
too (no failure-rate window, one probe), circuitbreaker keeps state per process.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("prognet.circuit")

State = Literal["closed", "open", "half_open"]
KEY_PREFIX = "circuit:"  # circuit:{name} (hash), circuit:{name}:calls and :failures (sorted sets by time)

_PREAMBLE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local function open(cooldown)
  open_until = now + cooldown
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', open_until, 'probes', 0, 'changed_at', now)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""

# ARGV: cooldown_ms, max_probes, half_open_retry_ms, jitter (1 to 1.5, this caller's own).
# Returns {allowed (0/1), state, retry_at_ms, now_ms, transitioned (0/1)}
_ACQUIRE = (
    _PREAMBLE
    + """
local cooldown, max_probes, retry, jitter = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if state == 'closed' then return {1, state, 0, now, 0} end
if state == 'open' then
  if now < open_until then return {0, state, open_until, now, 0} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probes', 1, 'changed_at', now)
  return {1, 'half_open', 0, now, 1}
end
-- half_open: a probe whose caller died never reports; after a cool-down its slot is free again
local changed_at = tonumber(redis.call('HGET', KEYS[1], 'changed_at') or '0')
if now - changed_at >= cooldown then
  redis.call('HSET', KEYS[1], 'probes', 0, 'changed_at', now)
end
local probes = tonumber(redis.call('HGET', KEYS[1], 'probes') or '0')
if probes < max_probes then
  redis.call('HINCRBY', KEYS[1], 'probes', 1)
  return {1, state, 0, now, 0}
end
-- A probe's answer usually comes in moments: come back soon, not after a whole cool-down. The longer the circuit
-- has been half-open, the longer the wait (at least as long again), so a slow probe is not met by every waiting
-- caller every `retry`; each caller's own jitter spreads out those turned away together. Nobody waits past the
-- moment the probe slot frees.
local wait = math.floor(math.max(retry, now - changed_at) * jitter)
return {0, state, math.min(changed_at + cooldown, now + wait), now, 0}
"""
)

# ARGV: ok (0/1), window_ms, min_calls, failure_rate (0..1), cooldown_ms, member.
# Returns {state, open_until, transitioned}
_RECORD = (
    _PREAMBLE
    + """
local ok, window, min_calls = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, cooldown, member = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if state == 'open' then return {state, open_until, 0} end
if state == 'half_open' then
  if ok then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'open_until', 0, 'probes', 0, 'changed_at', now)
    redis.call('DEL', KEYS[2], KEYS[3])
    return {'closed', 0, 1}
  end
  open(cooldown)
  return {'open', open_until, 1}
end
redis.call('ZADD', KEYS[2], now, member)
if not ok then redis.call('ZADD', KEYS[3], now, member) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], window)
redis.call('PEXPIRE', KEYS[3], window)
local calls, failures = redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3])
if not ok and calls >= min_calls and failures >= rate * calls then
  open(cooldown)
  return {'open', open_until, 1}
end
return {'closed', 0, 0}
"""
)


@dataclass(frozen=True)
class CircuitConfig:
    window: timedelta = timedelta(seconds=60)
    min_calls: int = 5
    failure_rate: float = 0.5
    cooldown: timedelta = timedelta(seconds=30)
    half_open_probes: int = 1
    # A call turned away while the probes are out is told to try again this soon (or, once the circuit has been
    # half-open longer, after as long again; either stretched by a random 1-1.5): if the probe succeeds, the
    # circuit is closed by then, and the caller must not sit out a whole cool-down behind it.
    half_open_retry: timedelta = timedelta(seconds=2)


@dataclass(frozen=True)
class Transition:
    name: str
    state: State  # the new state
    open_until: datetime | None  # when open: the end of the cool-down


class CircuitOpenError(Exception):
    """The call was not made: the service's circuit is open, or half-open with its trial calls all out.
    `until`: when this caller may try again."""

    def __init__(self, name: str, until: datetime, retry_after: timedelta, state: State = "open") -> None:
        self.name, self.until, self.retry_after, self.state = name, until, retry_after, state
        super().__init__(f"{name} circuit {self.reason}")

    @property
    def reason(self) -> str:
        """What callers and operators are told: "open until …" or, half-open, when to try again."""
        at = self.until.isoformat(timespec="seconds")
        if self.state == "half_open":
            return f"half-open (a trial call is testing the service), try again at {at}"
        return f"open until {at}"


OnTransition = Callable[[Transition], Awaitable[None]]


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class CircuitBreaker:
    """One named circuit (e.g. "stripe", "smtp", "webhook:hooks.example.com"); any number of instances in any
    number of processes with the same name and Redis share it.

        await breaker.acquire()          # raises CircuitOpenError while open
        ... call the service ...
        await breaker.record(ok=...)     # ok=False only for "the service is down" failures
    """

    def __init__(
        self, redis: Redis, name: str, config: CircuitConfig, on_transition: OnTransition | None = None
    ) -> None:
        self.redis, self.name, self.config = redis, name, config
        self.on_transition = on_transition
        self._keys = [f"{KEY_PREFIX}{name}", f"{KEY_PREFIX}{name}:calls", f"{KEY_PREFIX}{name}:failures"]
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)

    async def acquire(self) -> None:
        c = self.config
        try:
            allowed, state, until, now, moved = await self._acquire(
                keys=self._keys,
                args=[_ms(c.cooldown), c.half_open_probes, _ms(c.half_open_retry), random.uniform(1.0, 1.5)],
            )
        except RedisError as exc:
            log.warning("circuit %s: Redis unreachable, letting the call through: %s", self.name, exc)
            return
        state = _text(state)
        if moved:
            await self._report(Transition(self.name, "half_open", None))
        if not allowed:
            retry_after = timedelta(milliseconds=max(int(until) - int(now), 0))
            raise CircuitOpenError(
                self.name, _at(int(until)), retry_after, "half_open" if state == "half_open" else "open"
            )

    async def record(self, *, ok: bool) -> None:
        c = self.config
        args: list[int | float | str] = [
            int(ok),
            _ms(c.window),
            c.min_calls,
            c.failure_rate,
            _ms(c.cooldown),
            uuid.uuid4().hex,
        ]
        try:
            state, until, moved = await self._record(keys=self._keys, args=args)
        except RedisError as exc:
            log.warning("circuit %s: Redis unreachable, outcome not recorded: %s", self.name, exc)
            return
        if moved:
            new: State = "open" if _text(state) == "open" else "closed"
            await self._report(Transition(self.name, new, _at(int(until)) if new == "open" else None))

    async def _report(self, transition: Transition) -> None:
        until = f" until {transition.open_until.isoformat(timespec='seconds')}" if transition.open_until else ""
        log.warning("circuit %s is now %s%s", self.name, transition.state, until)
        if self.on_transition is not None:
            try:
                await self.on_transition(transition)
            except Exception:  # reporting must never turn a call's outcome into a failure
                log.exception("circuit %s: reporting the transition failed", self.name)


async def circuit_states(redis: Redis) -> dict[str, State]:
    """Every circuit Redis knows of, with its state (for the metrics endpoints)."""
    states: dict[str, State] = {}
    async for key in redis.scan_iter(match=f"{KEY_PREFIX}*", count=100):
        if _text(await redis.type(key)) == "hash":  # not one of the window's sorted sets
            state = _text(await redis.hget(key, "state") or "closed")
            states[_text(key)[len(KEY_PREFIX) :]] = state  # type: ignore[assignment]
    return states


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

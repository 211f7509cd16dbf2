"""A small consumer framework on `events:all`: ordered partitions, leases, ack after commit, retries, parking.

Order. A plain consumer group hands consecutive entries to different copies, so two events of one aggregate
could be applied out of order. Here each consumer has `partitions` consumer groups on the stream
(`{name}:p{k}`); an entry belongs to partition crc32(ordering key) % partitions, the ordering key being the
tenant id (else the aggregate id), so every event of a tenant, and of any aggregate, lands in one partition.
A copy works on a partition only while it holds that partition's lease in Redis, so each partition, hence each
aggregate, is processed by exactly one copy at a time and in stream order. Each group reads the whole stream and
acks the entries of other partitions unhandled (cheap: a few partitions).

Scale-out. Live copies heartbeat into a sorted set; each holds at most ceil(partitions / live copies) leases and
gives extra ones back, so a second copy gets half the partitions within one lease period.

Failure. A copy that dies stops renewing: after `lease_seconds` (the idle time) another copy takes the lease and
claims the dead copy's pending entries of that group (XAUTOCLAIM) before reading new ones, so they are redelivered
in order. The handler commits its transaction (which also records the event id: handlers are idempotent), then
the entry is acked. An exception is retried with backoff up to `max_attempts` (counted in Redis, so a crash
mid-handler counts too); then, or at once for `Park` (e.g. an unknown event version), the entry is copied to the
`events:parked` stream with the reason and acked. An outage of Redis or PostgreSQL is not an attempt: the copy
backs off and carries on where it was, reading its pending entries first (its client must not retry commands by
itself: `models.event_stream.backbone_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from models.event_stream import ALL_EVENTS, StreamEvent

log = logging.getLogger("prognet.consumer")

PARKED = "events:parked"
PARKED_MAXLEN = 10_000

Handler = Callable[[StreamEvent], Awaitable[None]]


class Park(Exception):
    """Raised by a handler for an entry it will never be able to apply: parked at once with this reason."""


def is_outage(exc: BaseException) -> bool:
    """A dependency being down is not the entry's fault: never counted as an attempt."""
    if isinstance(exc, (RedisError, OSError, ConnectionError, TimeoutError, OperationalError, InterfaceError)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    # connection exceptions (08…), shutdown or starting up (57P…), out of resources (53…)
    code = str(getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or code.startswith(("08", "57P", "53"))


@dataclass(frozen=True)
class ConsumerConfig:
    name: str
    partitions: int = 4
    lease_seconds: float = 10.0
    max_attempts: int = 5
    retry_delay: float = 0.2  # doubles with every failed attempt
    batch: int = 100
    block_seconds: float = 1.0  # longest wait for new entries (shortened to keep leases renewed)


def ordering_key(fields: dict[str, str]) -> str:
    return fields.get("tenant_id") or fields.get("aggregate_id") or ""


def partition_of(fields: dict[str, str], partitions: int) -> int:
    return zlib.crc32(ordering_key(fields).encode()) % partitions


# Take or renew a lease: 1 renewed, 2 newly taken, 0 held by another copy.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Consumer:
    def __init__(self, redis: Redis, config: ConsumerConfig, handler: Handler, *, copy_id: str | None = None) -> None:
        self.redis: Any = redis  # redis-py's reply types are unions of everything; entries are read as below
        self.config = config
        self.handler = handler
        self.copy_id = copy_id or f"{config.name}-{uuid.uuid4().hex[:8]}"
        self.held: set[int] = set()
        self.handled = 0  # entries this copy handled (applied or parked), for tests and logs
        self._stop = asyncio.Event()
        self._last_seen = "$"
        self._next_balance = 0.0  # monotonic time of the next lease round
        self._no_pending: set[int] = set()  # held partitions whose pending list this copy read empty

    # --- names -------------------------------------------------------------------------------------------------
    def group(self, k: int) -> str:
        return f"{self.config.name}:p{k}"

    def _lease_key(self, k: int) -> str:
        return f"consumer:{self.config.name}:lease:{k}"

    @property
    def _copies_key(self) -> str:
        return f"consumer:{self.config.name}:copies"

    @property
    def _attempts_key(self) -> str:
        return f"consumer:{self.config.name}:attempts"

    # --- running -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until stop(): reconnects by itself. Gives its leases back on a graceful stop (not on a crash)."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self._ensure_groups()
                while not self._stop.is_set():
                    await self.step()
                    delay = 0.2
            except Exception as exc:  # an outage (or a bug outside any handler): back off, never exit
                outage = is_outage(exc)
                log.warning("consumer %s: %r; retrying in %.1f s", self.copy_id, exc, delay, exc_info=not outage)
                self.held.clear()  # leases may lapse meanwhile: take them again properly
                self._no_pending.clear()
                self._next_balance = 0.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 5.0)
        with contextlib.suppress(Exception):
            await self._release_all()

    async def _ensure_groups(self) -> None:
        for k in range(self.config.partitions):
            try:
                await self.redis.xgroup_create(ALL_EVENTS, self.group(k), id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def step(self) -> int:
        """One round: leases when due, then every held partition's entries (its pending ones while there may be
        some, else new ones), read in one round trip and acked in another. Waits for the stream when the round
        left nothing behind."""
        if time.monotonic() >= self._next_balance:
            await self._balance()
        more = False
        read = 0
        if self.held:
            starts = {k: ">" if k in self._no_pending else "0" for k in sorted(self.held)}
            read, more = await self._drain(starts)
        if not more and not self._stop.is_set():
            await self._wait_for_entries()
        return read

    async def _balance(self) -> None:
        """Heartbeat, take or renew leases up to a fair share, give the rest back. Every third of a lease period
        (not every round: at one event per round that was most of a consumer's Redis calls)."""
        cfg, now = self.config, time.time()
        self._next_balance = time.monotonic() + cfg.lease_seconds / 3
        ttl_ms = int(cfg.lease_seconds * 1000)
        await self.redis.zadd(self._copies_key, {self.copy_id: now + cfg.lease_seconds})
        await self.redis.zremrangebyscore(self._copies_key, "-inf", now)
        live = max(1, await self.redis.zcard(self._copies_key))
        fair = math.ceil(cfg.partitions / live)
        for k in range(cfg.partitions):
            if k not in self.held and len(self.held) >= fair:
                continue
            got = await self.redis.eval(_LEASE, 1, self._lease_key(k), self.copy_id, ttl_ms)
            if got == 0:
                self.held.discard(k)
                self._no_pending.discard(k)
            elif got == 2 or k not in self.held:
                self.held.add(k)
                await self._claim(k)
        for k in sorted(self.held)[fair:]:  # more than a fair share: give the rest back
            await self.redis.eval(_RELEASE, 1, self._lease_key(k), self.copy_id)
            self.held.discard(k)
            self._no_pending.discard(k)

    async def _claim(self, k: int) -> None:
        """Take over the pending entries of whoever held partition k before (its lease expired: it is gone)."""
        self._no_pending.discard(k)
        start = "0-0"
        while True:
            start, claimed, *_ = await self.redis.xautoclaim(
                ALL_EVENTS, self.group(k), self.copy_id, min_idle_time=0, start_id=start, count=100
            )
            if claimed:
                log.info("consumer %s reclaimed %d entries of partition %d", self.copy_id, len(claimed), k)
            if start in ("0-0", b"0-0"):
                return

    async def _release_all(self) -> None:
        for k in list(self.held):
            await self.redis.eval(_RELEASE, 1, self._lease_key(k), self.copy_id)
        self.held.clear()
        await self.redis.zrem(self._copies_key, self.copy_id)

    async def _wait_for_entries(self) -> None:
        """Block on the stream itself (no group) until an entry newer than the last one delivered arrives."""
        block = min(self.config.block_seconds, self.config.lease_seconds / 3)
        if not self.held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), block)
            return
        if self._last_seen == "$":  # where the groups stand (all held groups were just read to the end)
            mine = {self.group(k) for k in self.held}
            ids = [
                _text(g["last-delivered-id"])
                for g in await self.redis.xinfo_groups(ALL_EVENTS)
                if _text(g["name"]) in mine
            ]
            self._last_seen = min(ids, key=_id_key) if ids else "0-0"
        await self.redis.xread({ALL_EVENTS: self._last_seen}, count=1, block=max(1, int(block * 1000)))

    async def _drain(self, starts: dict[int, str]) -> tuple[int, bool]:
        """Read each held partition's group from `starts` ("0": this copy's pending entries, redelivered in order;
        ">": new ones) in one pipelined round trip, handle the entries of each partition in stream order, then ack
        them (and forget their attempt counts) in one more. Returns how many entries were read, and whether more
        may be waiting (a pending list was read, a batch came back full, or the round was cut short).

        A pending list is read only while it may hold something: after taking the partition over, or after a
        round cut short. A crash before the ack redelivers the entries, and handlers are idempotent."""
        pipe = self.redis.pipeline(transaction=False)
        for k, start in starts.items():
            pipe.xreadgroup(self.group(k), self.copy_id, {ALL_EVENTS: start}, count=self.config.batch)
        replies = await pipe.execute()
        batches = {k: reply[0][1] if reply else [] for k, reply in zip(starts, replies, strict=True)}
        more = any(start == "0" for start in starts.values())
        read = 0
        acks: dict[int, list[str]] = {}
        handled: list[str] = []
        try:
            for k, entries in batches.items():
                if starts[k] == "0" and not entries:
                    self._no_pending.add(k)
                more = more or len(entries) >= self.config.batch
                for entry_id, raw in entries:
                    if self._stop.is_set() or k not in self.held:  # the rest stay pending: read them first
                        self._no_pending.difference_update(batches)
                        return read, True
                    fields = {_text(a): _text(b) for a, b in raw.items()}
                    eid = _text(entry_id)
                    if starts[k] == ">" and (self._last_seen == "$" or _id_key(eid) > _id_key(self._last_seen)):
                        self._last_seen = eid
                    if partition_of(fields, self.config.partitions) == k and await self._handle(eid, fields):
                        handled.append(eid)
                    acks.setdefault(k, []).append(eid)
                    read += 1
        finally:
            if acks:
                pipe = self.redis.pipeline(transaction=False)
                for k, ids in acks.items():
                    pipe.xack(ALL_EVENTS, self.group(k), *ids)
                if handled:
                    pipe.hdel(self._attempts_key, *handled)
                await pipe.execute()
        return read, more

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> bool:
        """Apply one entry (retrying) or park it; returns once it may be acked: True when it was applied (its
        attempt count is then forgotten with the ack), False when it was parked."""
        while True:
            attempt = await self.redis.hincrby(self._attempts_key, entry_id, 1)
            try:
                event = StreamEvent.from_fields(fields)
            except Exception as exc:
                await self._park(entry_id, fields, f"unreadable entry: {exc}", attempt)
                return False
            try:
                await self.handler(event)
            except Park as exc:
                await self._park(entry_id, fields, str(exc), attempt)
                return False
            except Exception as exc:
                if is_outage(exc):
                    await self.redis.hincrby(self._attempts_key, entry_id, -1)
                    raise
                if attempt >= self.config.max_attempts:
                    await self._park(entry_id, fields, f"{type(exc).__name__}: {exc}"[:500], attempt)
                    return False
                log.warning("consumer %s: %s failed (attempt %d): %s", self.copy_id, entry_id, attempt, exc)
                await asyncio.sleep(self.config.retry_delay * 2 ** (attempt - 1))
                continue
            self.handled += 1
            return True

    async def _park(self, entry_id: str, fields: dict[str, str], reason: str, attempts: int) -> None:
        await self.redis.xadd(
            PARKED,
            {**fields, "consumer": self.config.name, "entry_id": entry_id, "reason": reason, "attempts": str(attempts)},
            maxlen=PARKED_MAXLEN,
            approximate=True,
        )
        await self.redis.hdel(self._attempts_key, entry_id)
        self.handled += 1
        log.error("consumer %s parked %s (%s): %s", self.config.name, entry_id, fields.get("type"), reason)


async def parked(redis: Any, count: int = 100) -> list[dict[str, str]]:
    """The newest parked entries, newest first (what `prognet events parked` prints)."""
    rows = await redis.xrevrange(PARKED, count=count)
    return [{"parked_id": _text(i), **{_text(a): _text(b) for a, b in raw.items()}} for i, raw in rows]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)

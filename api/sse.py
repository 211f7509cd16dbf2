"""Server-sent event streams: the response every stream uses, per-user stream slots, and reading an event stream.

Live events reach a stream through the process's shared reader of its Redis stream (`api.fanout`): one XREAD
loop per stream key, each entry decoded and encoded once, handed to every client's bounded queue without waiting.
A client that resumes first catches up from Redis on its own, one batch (`BATCH` entries) at a time, each written
to the socket before the next is read. Memory per connection is bounded: a client whose queue fills (CLIENT_BUFFER
entries, shared with the other clients) or whose write waits longer than SSE_SEND_TIMEOUT_SECONDS (the ASGI server
bounds the socket's write buffer) ends with `event: error` `{"reason": "slow-consumer"}` (delivered if the client
reads within another SSE_SEND_TIMEOUT_SECONDS; it resumes with Last-Event-ID and misses nothing).

Each API process serves at most SSE_MAX_STREAMS_PER_PROCESS streams (`StreamCap`; beyond, 503
`streams-at-capacity`), and streams read Redis through a pool of their own (`app.state.sse_redis`, up to
SSE_REDIS_MAX_CONNECTIONS): a shared reader holds one while it waits in XREAD, a stream one while it catches up or
checks its guard, so ordinary requests on the main pool never wait behind streams.

Every stream holds a slot in the Redis sorted set `sse:slots:{user_id}` (member: the connection, score: when the
slot lapses), refreshed with each heartbeat and removed when the stream ends, so the per-user limit holds across
replicas and a crashed replica's slots lapse by themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.datastructures import State
from starlette.types import Message, Receive, Scope, Send
from temporalio.service import RPCError

from api.deps import Caller
from api.fanout import SEP, Entry, Fanout, Listener, entries_of, entry_key
from api.problems import (
    INVALID_LAST_EVENT_ID,
    PROBLEM_MEDIA_TYPE,
    STREAMS_AT_CAPACITY,
    TOO_MANY_STREAMS,
    WORKFLOW_ENGINE_UNAVAILABLE,
    Problem,
    ProblemDetails,
    unavailable_dependency,
)
from api.sessions import SessionStore
from models.event_stream import StreamEvent
from prognet.settings import Settings

log = logging.getLogger("prognet.api.sse")

BATCH = 100  # stream entries read (and held) per connection at a time
CAPACITY_RETRY_AFTER = 5  # seconds a client waits when this process holds as many streams as it may
STREAM_DB_CHECKS = 5  # of the API's 20 pooled database connections (models.db.make_engine)
_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


# --- the response --------------------------------------------------------------------------------------------


class SlowConsumer(Exception):
    """A write to the client waited longer than the send timeout."""


def message(event: str, data: Any, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, separators=(",", ":"), default=str), event=event, id=id, sep=SEP)


def ended(reason: str, detail: str) -> ServerSentEvent:
    """The last message of a stream the server ends early."""
    return message("error", {"reason": reason, "detail": detail})


class EventStream(EventSourceResponse):
    """`text/event-stream` with a bounded send, no library pings (our generators send heartbeats, together with
    the access checks), and `on_close` run once the stream is over, whatever ended it."""

    media_type = "text/event-stream"

    def __init__(
        self,
        messages: AsyncIterator[ServerSentEvent] | AsyncIterator[ServerSentEvent | bytes],
        *,
        send_timeout: float,
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(messages, ping=0, sep=SEP, headers={"Cache-Control": "no-store"})
        self.bounded_send_timeout = send_timeout
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self.bounded_send_timeout

        async def bounded(msg: Message) -> None:
            if msg["type"] != "http.response.body" or not msg.get("more_body"):
                await send(msg)
                return
            try:
                with anyio.fail_after(timeout):
                    await send(msg)  # waits only while the server's write buffer is full; writes all or nothing
            except TimeoutError:
                raise SlowConsumer from None

        try:
            await super().__call__(scope, receive, bounded)
        except SlowConsumer:
            log.info("slow consumer: ending its stream", extra={"path": scope.get("path")})
            farewell = ended("slow-consumer", "The client did not read fast enough; reconnect with Last-Event-ID.")
            with anyio.move_on_after(timeout):
                await send({"type": "http.response.body", "body": farewell.encode(), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self.on_close()
            except Exception as exc:  # Redis is down: the slot lapses by itself
                log.warning("stream cleanup failed: %s", type(exc).__name__, extra={"path": scope.get("path")})


def stream_responses(description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` of a stream: 200 as text/event-stream, and the problems answered before it starts."""
    problem = {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}}
    return {
        200: {"description": description, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **{status: problem for status in (400, 401, 404, 422)},
        429: {
            **problem,
            "description": "Too many open streams for this user (`too-many-streams`).",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
        },
        503: {
            **problem,
            "description": "This API process holds as many streams as it may (`streams-at-capacity`), or a service "
            "the stream reads is down.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
        },
    }


def end_reason(exc: BaseException) -> str | None:
    """The reason to send when `exc` is a dependency that went away mid-stream (the client reconnects later)."""
    kind = unavailable_dependency(exc)
    if kind is not None:
        return kind.slug
    if isinstance(exc, RPCError):
        return WORKFLOW_ENGINE_UNAVAILABLE.slug
    return None


# --- per-user stream slots -----------------------------------------------------------------------------------

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] == 'new' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


class StreamSlots:
    """At most `limit` open streams per user, counted in Redis; a slot lapses `ttl` seconds after its last refresh."""

    def __init__(self, redis: Redis, limit: int, ttl: float) -> None:
        self.redis = redis
        self.limit = limit
        self.ttl = ttl
        self._take = redis.register_script(_TAKE)

    @staticmethod
    def _key(user_id: uuid.UUID) -> str:
        return f"sse:slots:{user_id}"

    async def acquire(self, user_id: uuid.UUID, retry_after: float) -> str:
        slot = uuid.uuid4().hex
        if not await self._take(keys=[self._key(user_id)], args=[self.limit, self.ttl, slot, "new"]):
            raise Problem(
                TOO_MANY_STREAMS,
                f"You already have {self.limit} open streams; close one first.",
                headers={"Retry-After": str(max(1, round(retry_after)))},
            )
        return slot

    async def refresh(self, user_id: uuid.UUID, slot: str) -> None:
        await self._take(keys=[self._key(user_id)], args=[self.limit, self.ttl, slot, "refresh"])

    async def release(self, user_id: uuid.UUID, slot: str) -> None:
        await self.redis.zrem(self._key(user_id), slot)


def stream_slots(redis: Redis, settings: Settings) -> StreamSlots:
    # a slot outlives a few missed heartbeats, so only a dead replica's streams lapse
    return StreamSlots(redis, settings.sse_max_streams_per_user, 3 * settings.sse_heartbeat_seconds + 5)


class StreamCap:
    """At most `limit` streams open at once in this API process (counted in memory: the limit is per process), and
    at most STREAM_DB_CHECKS of their periodic access checks in the database at once: the rest wait here, not in
    the API's database pool, where hundreds of streams checking together would make ordinary requests time out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.db_checks = asyncio.Semaphore(STREAM_DB_CHECKS)

    def take(self) -> None:
        if self.open >= self.limit:
            raise Problem(
                STREAMS_AT_CAPACITY,
                f"This server holds {self.limit} streams, as many as it may; try again shortly.",
                headers={"Retry-After": str(CAPACITY_RETRY_AFTER)},
            )
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1


async def admit(
    state: State, caller: Caller, settings: Settings, access: Callable[[], Awaitable[bool]] | None = None
) -> Guard:
    """A place for one more stream of the caller: in this process, then among the user's slots (429). Everything a
    stream does in Redis from here on goes through the streams' own pool. Close the guard when the stream ends."""
    cap: StreamCap = state.sse_cap
    cap.take()
    try:
        slots = stream_slots(state.sse_redis, settings)
        slot = await slots.acquire(caller.user_id, retry_after=settings.sse_heartbeat_seconds)
    except BaseException:
        cap.give_back()
        raise
    return Guard(state.sse_sessions, caller, slots, slot, cap, access)


@dataclass
class Guard:
    """What keeps a stream open: the caller's session, the optional `access` check (tenant membership), its slot
    and its place in the process (`cap`)."""

    sessions: SessionStore
    caller: Caller
    slots: StreamSlots
    slot: str
    cap: StreamCap
    access: Callable[[], Awaitable[bool]] | None = None

    async def check(self) -> ServerSentEvent | None:
        """None while the stream may go on, else its final message. Refreshes the slot."""
        if await self.sessions.user_of(self.caller.session_id) != self.caller.user_id:
            return ended("session-ended", "The session of this access token has ended (logout or password change).")
        if self.access is not None:
            async with self.cap.db_checks:
                allowed = await self.access()
            if not allowed:
                return ended("access-revoked", "You no longer have access to this tenant's events.")
        await self.slots.refresh(self.caller.user_id, self.slot)
        return None

    async def close(self) -> None:
        try:
            await self.slots.release(self.caller.user_id, self.slot)
        finally:
            self.cap.give_back()


@dataclass
class Beat:
    """Heartbeat pacing."""

    every: float
    due: float = field(default=0.0)

    def __post_init__(self) -> None:
        # the first beat comes a little early, by chance: streams opened together do not check their guards together
        self.due = time.monotonic() + self.every * random.uniform(0.5, 1.0)

    def left(self) -> float:
        return max(0.0, self.due - time.monotonic())

    def next(self) -> None:
        self.due = time.monotonic() + self.every


# --- reading an event stream ---------------------------------------------------------------------------------


def parse_stream_id(value: str) -> tuple[int, int]:
    match = _STREAM_ID.match(value)
    if match is None:
        raise Problem(
            INVALID_LAST_EVENT_ID, "Last-Event-ID must be an event id this stream sent (e.g. `1700000000000-0`)."
        )
    return int(match[1]), int(match[2])


def _as_id(value: Any) -> tuple[int, int] | None:
    if value in (None, "", "0-0"):
        return None
    return parse_stream_id(str(value))


@dataclass(frozen=True)
class Start:
    position: str  # read entries after this id
    reset: bool  # the client's Last-Event-ID is beyond retention: it must re-read state


async def start_position(redis: Redis, stream: str, last_event_id: str | None) -> Start:
    """Where a connection starts reading: after Last-Event-ID while nothing after it was trimmed, else (and
    without one) after the stream's newest entry."""
    last = parse_stream_id(last_event_id) if last_event_id is not None else None
    try:
        info: dict[str, Any] = await redis.xinfo_stream(stream)
    except ResponseError:  # no such stream yet: nothing was ever published to it
        return Start(last_event_id or "0-0", reset=False)
    newest = str(info["last-generated-id"])
    if last is None:
        return Start(newest, reset=False)
    newest_id = _as_id(newest) or (0, 0)
    # Redis 7 says which id was deleted last (trimming); before it, the oldest retained entry bounds the gap
    # (conservatively: the client may get a reset it did not strictly need).
    trimmed = _as_id(info.get("max-deleted-entry-id"))
    first = info.get("first-entry")
    oldest = _as_id(first[0]) if first else None
    if "max-deleted-entry-id" in info:
        gap = trimmed is not None and last < trimmed
    else:
        gap = oldest is not None and last < oldest
    if gap or last > newest_id:  # trimmed past it, or an id this stream never had
        return Start(newest, reset=True)
    return Start(last_event_id or newest, reset=False)


@dataclass(frozen=True)
class TypeFilter:
    """`?types=`: exact types and `prefix.*` patterns; empty = every type."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, value: str | None) -> TypeFilter:
        items = [t.strip() for t in (value or "").split(",") if t.strip()]
        if "*" in items:
            return cls(frozenset(), ())
        return cls(
            frozenset(t for t in items if not t.endswith(".*")),
            tuple(t[:-1] for t in items if t.endswith(".*")),
        )

    def __call__(self, event_type: str) -> bool:
        if not self.exact and not self.prefixes:
            return True
        return event_type in self.exact or event_type.startswith(self.prefixes)


async def read_after(redis: Redis, stream: str, position: str) -> list[Entry]:
    """Up to BATCH entries after `position`, without waiting (a client catching up on its own)."""
    return entries_of(await redis.xread({stream: position}, count=BATCH))


class Delivery:
    """What one client has been sent: its position in the stream (every entry, shown or filtered) and the last
    id it was sent; entries at or before the position are skipped, so catching up and the fan-out overlap safely."""

    def __init__(self, position: str, visible: Callable[[StreamEvent], bool]) -> None:
        self.position = position
        self.key = entry_key(position)
        self.sent = position
        self.visible = visible

    def new(self, entries: list[Entry]) -> list[Entry]:
        return [e for e in entries if e.key > self.key]

    def passed(self, entry: Entry) -> bytes | None:
        """Moves past `entry`; its message when the client may see it."""
        self.position, self.key = entry.id, entry.key
        if not self.visible(entry.event):
            return None
        self.sent = entry.id
        return entry.encoded

    def heartbeat(self) -> ServerSentEvent:
        # an id-only message moves the client's Last-Event-ID past entries the filter skipped
        beat = ServerSentEvent(comment="heartbeat", id=self.position if self.position != self.sent else None, sep=SEP)
        self.sent = self.position
        return beat


async def event_messages(
    redis: Redis,
    fanout: Fanout,
    stream: str,
    start: Start,
    *,
    visible: Callable[[StreamEvent], bool],
    recheck_on: Callable[[StreamEvent], bool],
    guard: Guard,
    heartbeat: float,
) -> AsyncIterator[ServerSentEvent | bytes]:
    """The SSE messages of `stream` from `start` on, until the guard or a dependency ends them.

    A client first catches up from Redis on its own, BATCH entries at a time (one far behind stays behind in Redis,
    not in memory), then joins the process's shared reader of the stream and reads once more up to where that
    reader is, so nothing between the two is lost; entries it already had are skipped by their id."""
    delivery = Delivery(start.position, visible)
    if start.reset:
        yield message(
            "reset",
            {"reason": "Last-Event-ID is older than this stream keeps; re-read state over HTTP, then follow on."},
            id=start.position,
        )
    beat = Beat(heartbeat)
    listener: Listener | None = None
    final: ServerSentEvent | None = None

    async def send(entries: list[Entry]) -> AsyncIterator[bytes]:
        nonlocal final
        for entry in delivery.new(entries):
            if recheck_on(entry.event) and (final := await guard.check()) is not None:
                return
            if (encoded := delivery.passed(entry)) is not None:
                yield encoded

    async def pulse() -> AsyncIterator[ServerSentEvent]:
        """When a beat is due: the guard's check, then a heartbeat (or the final message, in `final`)."""
        nonlocal final
        if beat.left() == 0:
            final = await guard.check()
            if final is None:
                yield delivery.heartbeat()
                beat.next()

    try:
        while final is None:  # catching up on its own
            caught_up = await read_after(redis, stream, delivery.position)
            async for encoded in send(caught_up):
                yield encoded
            if len(caught_up) < BATCH:
                break
            async for beat_message in pulse():
                yield beat_message
        if final is None:
            listener = fanout.join(stream, delivery.position)
            # what came between that read and joining: the shared reader may already be past it
            while final is None and (gap := await read_after(redis, stream, delivery.position)):
                async for encoded in send(gap):
                    yield encoded
        while final is None and listener is not None:  # live, from the shared reader
            if listener.overflowed:
                final = ended("slow-consumer", "The client did not read fast enough; reconnect with Last-Event-ID.")
                break
            async for encoded in send(await listener.take(timeout=beat.left())):
                yield encoded
            if final is None:
                async for beat_message in pulse():
                    yield beat_message
        if final is not None:
            yield final
    except Exception as exc:
        reason = end_reason(exc)
        if reason is None:
            raise
        log.warning("event stream ended: %s", reason, extra={"stream": stream})
        yield ended(reason, "A service this stream reads went away; reconnect with Last-Event-ID.")
    finally:
        if listener is not None:
            fanout.leave(stream, listener)

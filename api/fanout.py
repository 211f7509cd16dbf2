"""One Redis reader per event stream per API process, shared by every client of that stream here.

A `SharedReader` runs one XREAD BLOCK loop on one stream key (`events:tenant:{id}`, `events:user:{id}`) while at
least one client listens to it: it reads each entry once, decodes it once and encodes its SSE message once, then
hands the same `Entry` to every listener's bounded queue. Handing over never waits: a listener whose queue is full
is dropped from the fan-out and marked `overflowed` (its stream then ends as a slow consumer), so a slow client
never delays the loop or the other clients. A Redis error does not end the loop: it reads again from the same
position after a backoff, so its listeners miss nothing; each client's own guard checks decide whether a long
outage ends its stream. The loop stops when its last listener leaves.

A client joins at whatever position the loop has reached and catches up to it from Redis on its own
(`api.sse.event_messages`); it skips entries it already sent by their stream id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sse_starlette import ServerSentEvent

from models.event_stream import StreamEvent

log = logging.getLogger("prognet.api.sse")

READ_BATCH = 500  # entries one XREAD of a shared reader takes at most
BLOCK_MS = 2000  # one XREAD BLOCK; below the API's Redis socket timeout (api.app: 5 s)
CLIENT_BUFFER = 1000  # entries a client's queue holds before it counts as a slow consumer
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0  # seconds between reads while Redis fails
SEP = "\n"


def entry_key(stream_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (ids compare numerically, not as strings)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def event_data(event: StreamEvent) -> dict[str, Any]:
    """What a client sees of an event (the catalogue's payload; never the actor's session or secrets)."""
    return {
        "event_id": str(event.event_id),
        "type": event.type,
        "version": event.version,
        "occurred_at": event.occurred_at.isoformat(),
        "aggregate": {"type": event.aggregate_type, "id": event.aggregate_id},
        "tenant_id": str(event.tenant_id) if event.tenant_id else None,
        "payload": event.payload,
    }


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry, decoded and encoded once for every client of this process."""

    id: str
    key: tuple[int, int]
    event: StreamEvent
    encoded: bytes  # the whole SSE message (`id:`, `event:`, `data:`)

    @classmethod
    def read(cls, entry_id: str, fields: dict[str, str]) -> Entry:
        event = StreamEvent.from_fields(fields)
        data = json.dumps(event_data(event), separators=(",", ":"), default=str)
        encoded = ServerSentEvent(data, event=event.type, id=entry_id, sep=SEP).encode()
        return cls(entry_id, entry_key(entry_id), event, encoded)


def entries_of(reply: Any) -> list[Entry]:
    """The entries of an XREAD reply of one stream. One that is not an event (not the relay's) is skipped, so it
    cannot stop the stream for every client of it."""
    entries = []
    for _name, found in reply or []:
        for entry_id, fields in found:
            try:
                entries.append(Entry.read(entry_id, fields))
            except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                log.warning("skipped stream entry %s that is not an event: %s", entry_id, type(exc).__name__)
    return entries


class Listener:
    """One client's place in a shared reader: a bounded queue of entries, drained a batch at a time."""

    def __init__(self, limit: int, demand: asyncio.Event) -> None:
        self.limit = limit
        self.entries: deque[Entry] = deque()
        self.overflowed = False
        self._wake = asyncio.Event()
        self._demand = demand  # its reader's: set whenever a listener has taken everything queued

    def offer(self, entries: list[Entry]) -> bool:
        """Queue `entries` without waiting; False (and overflowed) when they do not fit."""
        if len(self.entries) + len(entries) > self.limit:
            self.overflowed = True
            self.entries.clear()  # it will not send them: free them now
        else:
            self.entries.extend(entries)
        self._wake.set()
        return not self.overflowed

    async def take(self, timeout: float) -> list[Entry]:
        """What is queued, waiting up to `timeout` seconds for something."""
        if not self.entries and not self.overflowed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()
        taken = list(self.entries)
        self.entries.clear()
        self._demand.set()
        return taken


class SharedReader:
    """The XREAD BLOCK loop of one stream key, running while it has listeners."""

    def __init__(self, redis: Redis, stream: str, position: str) -> None:
        self.redis = redis
        self.stream = stream
        self.position = position
        self.listeners: set[Listener] = set()
        self.demand = asyncio.Event()  # a listener is ready for more
        self.xreads = 0  # XREAD calls made (tests: one loop serves every client)
        self.task = asyncio.create_task(self._run(), name=f"sse-reader {stream}")

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._while_all_busy()
            try:
                self.xreads += 1
                reply: Any = await self.redis.xread({self.stream: self.position}, count=READ_BATCH, block=BLOCK_MS)
            except Exception as exc:  # Redis is away: read again from the same position, later
                failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                log.warning("shared stream reader: %s; retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            read = [entry_id for _name, found in reply or [] for entry_id, _fields in found]
            if read:
                self.position = read[-1]  # past every entry read, skipped ones too
            entries = entries_of(reply)
            if not entries:
                continue
            for listener in list(self.listeners):
                if not listener.offer(entries):
                    self.listeners.discard(listener)  # a slow consumer: its stream ends, the others go on

    async def _while_all_busy(self) -> None:
        """While every listener still has entries queued (all are busy writing), read nothing for up to one block:
        entries wait in Redis and come in one batch, rather than as work nobody can take yet. One listener keeping
        up is enough to read on, so a slow client never holds up a fast one."""
        if not self.listeners or not all(listener.entries for listener in self.listeners):
            return
        self.demand.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BLOCK_MS / 1000):
                await self.demand.wait()


class Fanout:
    """This process's shared readers, one per stream key with listeners."""

    def __init__(self, redis: Redis, client_buffer: int = CLIENT_BUFFER) -> None:
        self.redis = redis
        self.client_buffer = client_buffer
        self.readers: dict[str, SharedReader] = {}

    def join(self, stream: str, position: str) -> Listener:
        """Listen to `stream` from where its reader is (a new reader starts at `position`)."""
        reader = self.readers.get(stream)
        if reader is None:
            reader = self.readers[stream] = SharedReader(self.redis, stream, position)
        listener = Listener(self.client_buffer, reader.demand)
        reader.listeners.add(listener)
        return listener

    def leave(self, stream: str, listener: Listener) -> None:
        reader = self.readers.get(stream)
        if reader is None:
            return
        reader.listeners.discard(listener)  # already gone if it was dropped as a slow consumer
        if not reader.listeners:
            del self.readers[stream]
            reader.task.cancel()  # redis-py drops a connection cancelled mid-command rather than reuse it

    async def close(self) -> None:
        readers = list(self.readers.values())
        self.readers.clear()
        for reader in readers:
            reader.task.cancel()
        await asyncio.gather(*(r.task for r in readers), return_exceptions=True)

"""A tiny round-robin TCP front for several API replicas (`prognet dev --api-replicas N`).

Each accepted connection goes to the next upstream that is healthy; a replica that refuses the connection is marked
down and the next one is tried, so a killed replica costs no request that had not reached it yet. A background
check connects to every upstream each `check_interval` seconds and brings recovered ones back. The front speaks TCP
only: a keep-alive HTTP connection stays on the replica it first reached (clients that should spread evenly open a
connection per request), and a replica that dies mid-request drops that connection, which the client sees as a
transport error to retry, as it would behind any load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence

from .ports import tcp_accepts

_CHUNK = 1 << 16


class RoundRobinFront:
    def __init__(
        self, host: str, port: int, upstreams: Sequence[tuple[str, int]], *, check_interval: float = 0.5
    ) -> None:
        self.host, self.port = host, port
        self.upstreams = list(upstreams)
        self.check_interval = check_interval
        self.healthy = set(self.upstreams)
        self.connections: Counter[tuple[str, int]] = Counter()  # connections handed to each upstream
        self.refused = 0  # connections no upstream took (answered by closing them)
        self._next = 0
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None
        self._open: set[asyncio.StreamWriter] = set()  # both ends of every connection being proxied
        self.crashed = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self._checker = asyncio.create_task(self._check_forever(), name="front-health")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for writer in list(self._open):  # the pipes see their connections end and return
            writer.close()
        self._server = self._checker = None

    async def _check_forever(self) -> None:
        while True:
            for upstream in self.upstreams:
                if await tcp_accepts(*upstream, timeout=1.0):
                    self.healthy.add(upstream)
                else:
                    self.healthy.discard(upstream)
            await asyncio.sleep(self.check_interval)

    def _order(self) -> list[tuple[str, int]]:
        """The upstreams to try for one connection: healthy ones in round-robin order, then the others."""
        start = self._next
        self._next = (self._next + 1) % len(self.upstreams)
        turn = self.upstreams[start:] + self.upstreams[:start]
        return [u for u in turn if u in self.healthy] + [u for u in turn if u not in self.healthy]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            for upstream in self._order():
                try:
                    up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*upstream), 2)
                except (OSError, TimeoutError):
                    self.healthy.discard(upstream)
                    continue
                self.connections[upstream] += 1
                self._open.add(up_writer)
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                finally:
                    self._open.discard(up_writer)
                    up_writer.close()
                return
            self.refused += 1
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()  # one side went away: end the other side too

"""A TCP (or Unix socket) relay in front of a real service, switched off and on again to make an outage: the
listener closes and live connections are cut, as when the service's process dies."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class TcpRelay:
    """A listener (TCP port or Unix socket) → the target, until `down()`; `up()` listens at the same place again."""

    def __init__(self, target: tuple[str, int] | Path, listen: tuple[str, int] | Path) -> None:
        self.target, self.listen = target, listen
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if isinstance(self.listen, Path):
            self._server = await asyncio.start_unix_server(self._relay, path=self.listen)
        else:
            self._server = await asyncio.start_server(self._relay, *self.listen)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, Path):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)  # before connecting: `down()` during the connect cuts it too
        try:
            server_reader, server_writer = await asyncio.wait_for(self._connect(), 5)
        except (OSError, TimeoutError):
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        if client_writer not in self._writers:  # went down meanwhile
            server_writer.transport.abort()
            return
        self._writers.add(server_writer)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._writers -= {client_writer, server_writer}

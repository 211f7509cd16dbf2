"""The bench's own HTTP/1.1 client: requests written and answers read by hand over kept-alive connections.

The bench runs on the cores it measures. An HTTP client library spends a few milliseconds of CPU per request (with
httpx, the login storm's client took 6 ms per login and the `/healthz` probes most of the bench process's CPU);
this spends a fraction of one, so what the bench measures is the server's cost and not its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    seconds: float  # from writing the request until the whole answer was read

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self, what: str) -> None:
        if not 200 <= self.status < 300:
            raise RuntimeError(f"{what} answered {self.status}: {self.body[:200]!r}")


class Http1Connection:
    """One kept-alive connection to the server at `base_url`; opened again when the server closed it."""

    def __init__(self, base_url: str) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port or 80
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Answer:
        """Send one request (`body` as JSON) and read the whole answer. A new connection's setup is not timed;
        no answer within `timeout` raises TimeoutError (and the connection is dropped: its state is unknown)."""
        if self._conn is None or self._conn[0].at_eof():  # never opened, or the server closed it while idle
            await self.close()
            self._conn = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                answer = await self._exchange(head.encode() + b"\r\n" + payload)
        except BaseException:
            await self.close()
            raise
        status, answer_headers, content = answer
        if answer_headers.get("connection") == "close":
            await self.close()
        return Answer(status, answer_headers, content, time.perf_counter() - start)

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._conn is not None
        reader, writer = self._conn
        writer.write(request)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            return status, headers, await _read_chunked(reader)
        return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # the empty trailer
    return b"".join(parts)


class ConnectionPool:
    """`size` connections, each used by one caller at a time (the bench's concurrency); closed on leaving
    `async with`."""

    def __init__(self, base_url: str, size: int) -> None:
        self._idle: asyncio.Queue[Http1Connection] = asyncio.Queue()
        self._all = [Http1Connection(base_url) for _ in range(size)]
        for conn in self._all:
            self._idle.put_nowait(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Http1Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for conn in self._all:
            await conn.close()


class HealthzProbe:
    """`GET /healthz` over one kept-alive connection."""

    def __init__(self, base_url: str) -> None:
        self._conn = Http1Connection(base_url)

    async def get(self) -> float:
        """Seconds until the whole answer was read; anything but 200 is an error."""
        answer = await self._conn.request("GET", "/healthz")
        if answer.status != 200:
            raise RuntimeError(f"/healthz answered {answer.status}")
        return answer.seconds

    async def close(self) -> None:
        await self._conn.close()

"""uvicorn's httptools HTTP/1.1 protocol, with each response's head sent in the same write as its body.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and the body
in a second write: two packets, and the client is woken twice. Under load that second wake-up is costly: the
client, woken by the head, takes the API's core from it (the kernel lets a newly woken task run first), reads a
head it cannot use yet, and the API's event loop, preempted with the body still unwritten, waits for a core until
the next scheduler tick (up to 4 ms on a kernel built with HZ=250 and no preemption). `perf sched` during a login
storm with argon2 on both cores showed that in most `/healthz` probes slower than 3 ms (15 of 25): the API ran
0.8 ms, was preempted after the head, and wrote the body 2-5 ms later.

Here a connection's transport holds a response head until the app's next write on that connection (the body's
first bytes, or the empty write uvicorn makes to end a body-less answer), and writes both as one. A head that
nothing follows within the current turn of the event loop (a stream whose first event is not ready yet) is written
on its own at the next turn, so a client never waits for headers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _is_head(data: Any) -> bool:
    return isinstance(data, bytes) and data.startswith(b"HTTP/1.") and data.endswith(b"\r\n\r\n")


class HeadWithBody:
    """A connection's transport (everything delegated) whose writes keep a response head for the next write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""
        self._flush: asyncio.Handle | None = None

    def write(self, data: Any) -> None:
        if self._head:
            data = self._take_head() + bytes(data)
        elif _is_head(data):
            self._head = data
            self._flush = self._loop.call_soon(self._write_head)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        return head

    def _write_head(self) -> None:
        self._flush = None
        head = self._take_head()
        if head and not self._transport.is_closing():
            self._transport.write(head)

    def write_eof(self) -> None:
        self._write_head()
        self._transport.write_eof()

    def close(self) -> None:
        self._write_head()
        self._transport.close()

    def abort(self) -> None:
        self._take_head()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """`uvicorn.run(..., http=HttpProtocol)`: httptools, each response's head and body in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport, self.loop))  # type: ignore[arg-type]

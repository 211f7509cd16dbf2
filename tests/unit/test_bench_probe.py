"""The bench's hand-written `/healthz` probe: one kept-alive connection, the whole answer read, a non-200 an error."""

from __future__ import annotations

import asyncio

import pytest

from prognet_dev.bench import HealthzProbe


async def _server(answers: list[bytes]) -> tuple[asyncio.Server, list[int]]:
    """Answers each request with the next of `answers`; counts requests per connection."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        while answers:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            per_connection[-1] += 1
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), per_connection


def _answer(status: str, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_probes_share_one_connection_and_read_the_whole_answer() -> None:
    ok = _answer("200 OK", b'{"status":"ok"}')
    server, per_connection = await _server([ok, ok, ok])
    port = server.sockets[0].getsockname()[1]
    probe = HealthzProbe(f"http://127.0.0.1:{port}")
    try:
        latencies = [await probe.get() for _ in range(3)]
    finally:
        await probe.close()
        server.close()
    assert all(0 < t < 5 for t in latencies)
    assert per_connection == [3]


async def test_a_closed_connection_is_opened_again_and_a_non_200_is_an_error() -> None:
    answers = [_answer("200 OK", b"ok", "Connection: close"), _answer("503 Service Unavailable", b"down")]
    server, per_connection = await _server(answers)
    port = server.sockets[0].getsockname()[1]
    probe = HealthzProbe(f"http://127.0.0.1:{port}")
    try:
        await probe.get()
        with pytest.raises(RuntimeError, match="503"):
            await probe.get()
    finally:
        await probe.close()
        server.close()
    assert per_connection == [1, 1]

"""The bench's HTTP/1.1 client: kept-alive connections, whole answers read, a non-200 probe an error."""

from __future__ import annotations

import asyncio

import pytest

from prognet_dev.bench.http1 import HealthzProbe, Http1Connection


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


async def test_a_post_sends_its_json_and_headers_and_a_chunked_answer_is_read_whole() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length"))
        seen.extend([head, await reader.readexactly(length)])
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n")
        writer.write(b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    conn = Http1Connection(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        answer = await conn.request("POST", "/v1/things", {"name": "x"}, headers={"Idempotency-Key": "k1"})
    finally:
        await conn.close()
        server.close()
    assert answer.status == 201 and answer.json() == {"a": 1} and answer.headers["retry-after"] == "3"
    assert seen[0].startswith(b"POST /v1/things HTTP/1.1\r\n") and b"Idempotency-Key: k1\r\n" in seen[0]
    assert seen[1] == b'{"name": "x"}'

"""The API's HTTP protocol: a response's head goes out in the same write as its body, and never waits for it."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.http_protocol import HeadWithBody
from tests.support.sse import serve

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_a_head_and_its_body_are_one_write():
    recorder = Recorder()
    transport = HeadWithBody(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert recorder.writes == []
    transport.write(b"ok")
    assert recorder.writes == [HEAD + b"ok"]
    await asyncio.sleep(0)  # the head's fallback write was cancelled: nothing more
    assert recorder.writes == [HEAD + b"ok"]
    transport.write(b"more")  # not a head: written at once
    assert recorder.writes[-1] == b"more"
    assert transport.get_extra_info("peername") == "extra peername"  # everything else is the transport's


async def test_a_head_without_a_body_yet_goes_out_at_the_next_turn_of_the_loop():
    recorder = Recorder()
    transport = HeadWithBody(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.writes == [HEAD]


async def test_closing_writes_a_held_head_first_and_aborting_drops_it():
    recorder = Recorder()
    transport = HeadWithBody(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.close()
    assert recorder.writes == [HEAD] and recorder.events == ["close"]

    recorder = Recorder()
    transport = HeadWithBody(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert recorder.writes == [] and recorder.events == ["abort"]


# --- through uvicorn --------------------------------------------------------------------------------------------

STREAM_GAP = 0.5


async def _slow_stream():
    await asyncio.sleep(STREAM_GAP)
    yield b"late"


def _app() -> Starlette:
    async def json_answer(request):
        return JSONResponse({"ok": True})

    async def empty(request):
        return Response(status_code=204)

    async def stream(request):
        return StreamingResponse(_slow_stream(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/json", json_answer, methods=["GET", "HEAD"]),
            Route("/empty", empty),
            Route("/stream", stream),
        ]
    )


@contextlib.asynccontextmanager
async def _server():
    """The test app served as `prognet api` serves the API (tests/support/sse.py): yields its port."""
    async with serve(app=_app()) as url:
        yield int(url.rsplit(":", 1)[1])


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return head, await reader.readexactly(length) if length else b""


async def test_answers_through_uvicorn_arrive_whole_and_keep_alive_works():
    async with _server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in (b"GET /json", b"HEAD /json", b"GET /empty", b"GET /json"):  # one kept-alive connection
            writer.write(request + b" HTTP/1.1\r\nHost: test\r\n\r\n")
            head, body = (
                await _read_answer(reader) if request != b"HEAD /json" else (await reader.readuntil(b"\r\n\r\n"), b"")
            )
            status = head.split(b"\r\n")[0]
            if request == b"GET /empty":
                assert status == b"HTTP/1.1 204 No Content" and body == b""
            else:
                assert status == b"HTTP/1.1 200 OK"
                assert body == (b'{"ok":true}' if request == b"GET /json" else b"")
        writer.close()


async def test_a_streams_headers_do_not_wait_for_its_first_chunk():
    async with _server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        loop = asyncio.get_running_loop()
        start = loop.time()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and loop.time() - start < STREAM_GAP / 2
        assert b"late" in await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()

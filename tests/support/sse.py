"""Server-sent event streams over real HTTP, shared by the event-stream, fan-out and capacity tests: the API
under uvicorn in the test's loop, a stream read message by message, events XADDed as the relay would, and the
fixtures these tests read PostgreSQL and Redis through (an engine of their own, a Redis client decoding replies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from api.app import create_app
from api.http_protocol import HttpProtocol
from models.event_stream import StreamEvent, tenant_stream, user_stream
from prognet.settings import Settings
from tests.api.conftest import Account, insert_user, login

SSE = {"heartbeat": 0.3, "send_timeout": 1.0}


def sse_settings(base: Settings, **extra: Any) -> Settings:
    return base.model_copy(
        update={
            "sse_heartbeat_seconds": SSE["heartbeat"],
            "sse_send_timeout_seconds": SSE["send_timeout"],
            "sse_max_streams_per_user": 3,
            **extra,
        }
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signal handlers
        yield


@asynccontextmanager
async def serve(
    settings: Settings | None = None, send_buffer: int | None = None, app: ASGIApp | None = None
) -> AsyncIterator[str]:
    """The API under uvicorn on a free port, in this event loop (httpx's ASGI transport does not stream), with
    the HTTP protocol `prognet api` runs (api/http_protocol.py). `send_buffer` fixes the kernel's send buffer of
    its connections (else it grows to megabytes); `app` is the ASGI application to serve (default: the API made
    from `settings`)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if app is None:
        assert settings is not None, "serve() needs the settings of the API, or an app"
        app = create_app(settings)
    config = uvicorn.Config(app, http=HttpProtocol, log_level="warning", timeout_graceful_shutdown=1)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        assert not task.done(), "the API did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        listener.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@dataclass
class Message:
    event: str | None
    id: str | None
    data: Any
    comment: str | None


class Stream:
    """One open SSE response, read message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0, *, comments: bool = False) -> Message | None:
        """The next message (heartbeats skipped unless `comments`); None when the stream ended."""
        async with asyncio.timeout(timeout):
            while True:
                fields: dict[str, str] = {}
                comment = None
                async for line in self.lines:
                    if line == "":
                        break
                    if line.startswith(":"):
                        comment = line[1:].strip()
                        continue
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                else:
                    return None
                if "data" in fields or comments:
                    data = json.loads(fields["data"]) if "data" in fields else None
                    return Message(fields.get("event"), fields.get("id"), data, comment)

    async def take(self, n: int, timeout: float = 5.0) -> list[Message]:
        return [m for m in [await self.next(timeout) for _ in range(n)] if m is not None]


@asynccontextmanager
async def stream(
    http: httpx.AsyncClient, headers: dict[str, str], path: str = "/v1/events/stream", **params: str
) -> AsyncIterator[Stream]:
    async with http.stream("GET", path, headers=headers, params=params) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def event(type: str, *, tenant: uuid.UUID | None = None, user: uuid.UUID | None = None, **payload: Any) -> StreamEvent:
    return StreamEvent(
        seq=1,
        event_id=uuid.uuid4(),
        type=type,
        version=1,
        aggregate_type="test",
        aggregate_id="a",
        tenant_id=tenant,
        user_id=user,
        actor_id=None,
        workflow_id=None,
        occurred_at=datetime.now(UTC),
        payload=payload,
    )


async def publish(redis: Redis, *events: StreamEvent) -> list[str]:
    """XADD as the relay does; the entry ids."""
    ids = []
    for e in events:
        target = user_stream(e.user_id) if e.user_id else tenant_stream(str(e.tenant_id))
        ids.append(await redis.xadd(target, e.to_fields()))  # type: ignore[arg-type]
    return ids


async def logged_in(http: httpx.AsyncClient, engine: AsyncEngine) -> tuple[Account, dict[str, Any]]:
    account = await insert_user(engine)
    return account, await login(http, account)

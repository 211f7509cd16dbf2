"""A tiny webhook receiver for development and tests: `prognet webhook-receiver --port P --secret whsec_…`.

Verifies each POST's Standard Webhooks signature, answers 500 to the first `--fail N` requests (to watch the
retry schedule), dedupes by `webhook-id` and prints one line per verified delivery. Not for production use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhooks.signing import InvalidSignature, verify


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: dict
    raw: bytes  # the body as sent (what the signature covers)
    at: float  # time.time() when it arrived
    peer: str = ""  # the sender's address and port: the same for requests over one kept-alive connection


@dataclass
class WebhookReceiver:
    secrets: list[str]
    fail: int = 0  # answer 500 to this many (verified) requests first
    out: Callable[[str], None] | None = print
    delivered: list[Received] = field(default_factory=list)  # verified and answered 2xx, first copy of each id
    requests: list[Received] = field(default_factory=list)  # every verified request, failed ones included
    rejected: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> JSONResponse:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        now = int(time.time())
        msg_id = None
        for secret in self.secrets:
            with contextlib.suppress(InvalidSignature):
                msg_id = verify(secret, headers, raw, now)
                break
        if msg_id is None:
            self.rejected += 1
            self._print(f"rejected: bad signature ({headers.get('webhook-id', 'no webhook-id')})")
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        body = json.loads(raw)
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        item = Received(msg_id, headers, body, raw, time.time(), peer)
        self.requests.append(item)
        if self.fail > 0:
            self.fail -= 1
            self._print(f"failing on purpose: {msg_id} {body.get('type')} (500, {self.fail} more to fail)")
            return JSONResponse({"error": "failing on purpose"}, status_code=500)
        if any(d.webhook_id == msg_id for d in self.delivered):
            self._print(f"duplicate: {msg_id} {body.get('type')} (already delivered; answered 200)")
            return JSONResponse({"duplicate": True})
        self.delivered.append(item)
        self._print(f"delivered: {msg_id} {body.get('type')} event={body.get('id')} at={body.get('occurred_at')}")
        return JSONResponse({"ok": True})

    def _print(self, line: str) -> None:
        if self.out is not None:
            self.out(line)


@contextlib.asynccontextmanager
async def serving(receiver: WebhookReceiver, host: str, port: int) -> AsyncIterator[str]:
    """Run the receiver in this event loop; yields its base URL."""
    config = uvicorn.Config(receiver.app(), host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task

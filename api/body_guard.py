"""Request-body guards: a size cap (ASGI middleware) and a JSON content-type check (route dependency).

The size cap runs before routing: a declared `Content-Length` over the limit is refused at once; a
streamed body is counted as it arrives and refused as soon as it passes the limit. Bodies under the
limit (64 KiB) are buffered and replayed to the app, so nothing downstream ever sees a partial body.
"""

from __future__ import annotations

from email.message import Message

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from api.problems import PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, Problem, problem_response

MAX_BODY_BYTES = 64 * 1024


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            PAYLOAD_TOO_LARGE,
            f"Request bodies are limited to {self.max_bytes} bytes.",
            scope.get("path", ""),
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def is_json_media_type(content_type: str) -> bool:
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def require_json_body(request: Request) -> None:
    """415 for a request that carries a body in anything but JSON (a body-less request passes)."""
    has_body = request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers
    if not has_body:
        has_body = bool(await request.body())
    if has_body and not is_json_media_type(request.headers.get("content-type", "")):
        raise Problem(
            UNSUPPORTED_MEDIA_TYPE,
            "Send the request body as application/json.",
            headers={"Accept-Post": "application/json"},
        )

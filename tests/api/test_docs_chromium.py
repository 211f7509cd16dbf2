"""/docs and /redoc render in a real browser that can reach nothing but 127.0.0.1: their scripts ran, offline.

Needs Chromium; CI installs it (.ci/run), so a missing browser fails rather than skips.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from prognet_dev import free_port
from prognet_dev.browser import dump_dom, find_chromium

PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def probe_page(port: int) -> bytes:
    """Three images: one from this server, one from the same server named `localhost`, one from a CDN."""
    images = {
        "same-origin": "/_probe/pixel.gif",
        "localhost": f"http://localhost:{port}/_probe/pixel.gif",
        "cdn": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/favicon-32x32.png",
    }
    tags = "".join(
        f"""<img id="{name}" src="{src}" onload="this.dataset.state='loaded'" onerror="this.dataset.state='failed'">"""
        for name, src in images.items()
    )
    return f"<!doctype html><html><body>{tags}</body></html>".encode()


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real 127.0.0.1 port (its lifespan is the fixture's), plus a probe page under /_probe."""
    port = free_port("127.0.0.1")

    async def probe(scope, receive, send) -> None:
        body, kind = (PIXEL, "image/gif") if scope["path"].endswith(".gif") else (probe_page(port), "text/html")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind.encode())]})
        await send({"type": "http.response.body", "body": body})

    async def asgi(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_probe"):
            return await probe(scope, receive, send)
        return await app(scope, receive, send)

    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    if find_chromium() is None:
        pytest.fail(
            "Chromium is not installed; CI installs it (.ci/run). Locally: apt-get install chromium", pytrace=False
        )


def image_states(dom: str) -> dict[str, str]:
    return dict(re.findall(r'<img id="([\w-]+)"[^>]*data-state="(\w+)"', dom))


async def test_the_browser_reaches_only_127_0_0_1(served: str) -> None:
    offline = image_states(await dump_dom(f"{served}/_probe", budget_ms=3000))
    assert offline == {"same-origin": "loaded", "localhost": "failed", "cdn": "failed"}
    # the same page with the resolver rule lifted: `localhost` (this very server) loads, so the rule is what blocks
    online = image_states(await dump_dom(f"{served}/_probe", budget_ms=3000, loopback_only=False))
    assert online["localhost"] == "loaded"


def operation_count(app: FastAPI) -> int:
    return sum(len(methods) for methods in app.openapi()["paths"].values())


async def test_swagger_ui_renders_the_operations_offline(app: FastAPI, served: str) -> None:
    dom = await dump_dom(f"{served}/docs")
    assert "ProgNetwork API" in dom, dom[:2000]
    operations = re.findall(r'class="opblock opblock-(?:get|post|put|patch|delete)', dom)
    assert len(operations) == operation_count(app), "Swagger UI shows every operation"
    assert "/v1/auth/register" in dom
    assert "Failed to load API definition" not in dom


async def test_redoc_renders_the_operations_offline(app: FastAPI, served: str) -> None:
    dom = await dump_dom(f"{served}/redoc")
    assert re.search(r"<h1[^>]*>ProgNetwork API", dom), dom[:2000]
    operations = re.findall(r'data-item-id="(?:tag/[^"/]+/)?operation/', dom)
    assert len(operations) == operation_count(app), "ReDoc's menu lists every operation"
    assert "/v1/auth/register" in dom

"""The real embedded stack (Temporal, PostgreSQL, Redis, SMTP sink) with the worker and API as child
processes, exactly as `prognet dev` runs them, but in a temp dir on free ports."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from prognet.payload_codec import data_converter
from prognet_dev import EmbeddedStack, read_messages, stack_settings, wait_for_messages

PASSWORD = "correct horse battery staple"
# Email delivery tuned for tests: short SMTP timeout and backoff, a rate limit low enough to observe.
SEND_RATE = 8
SLOW_SECONDS = 4
FAST_EMAIL = {
    "SMTP_TIMEOUT_SECONDS": "1.5",
    "EMAIL_RETRY_INITIAL_SECONDS": "0.3",
    "EMAIL_RETRY_MAX_INTERVAL_SECONDS": "1.5",
    "EMAIL_RETRY_MAX_ATTEMPTS": "40",
    "EMAIL_MAX_PER_SECOND": str(SEND_RATE),
}
# A delivery attempt lost with its worker is retried when its start-to-close timeout (this + 15 s) runs out.
FAST_WEBHOOKS = {"WEBHOOK_TIMEOUT_SECONDS": "3"}
# Tests share one stack, and so its circuit breakers: a circuit a relay outage opened closes again within seconds,
# not after the production 30 s cool-down that would hold the next test's messages back.
SHORT_CIRCUITS = {"CIRCUIT_COOLDOWN_SECONDS": "3"}
LOG_TAIL: deque[str] = deque(maxlen=400)


def _keep_log(name: str, line: str) -> None:
    LOG_TAIL.append(f"{name} | {line}")


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[EmbeddedStack]:
    # Not under pytest's tmp dir: pytest makes it 0700, which locks out PostgreSQL's own system user.
    data_dir = Path(tempfile.mkdtemp(prefix="prognet-it-"))
    data_dir.chmod(0o755)
    stack = EmbeddedStack(
        stack_settings(data_dir / "data"),
        app=True,
        log=_keep_log,
        smtp_slow_seconds=SLOW_SECONDS,
        extra_env={**FAST_EMAIL, **FAST_WEBHOOKS, **SHORT_CIRCUITS},
    )
    try:
        await stack.start()
    except BaseException:
        print("\n".join(LOG_TAIL))
        raise
    yield stack
    await stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def http(stack: EmbeddedStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def temporal(stack: EmbeddedStack) -> Client:
    return await Client.connect(
        stack.temporal_address, namespace=stack.temporal_namespace, data_converter=data_converter(stack.settings())
    )


def new_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


async def email_to(stack: EmbeddedStack, address: str, timeout: float = 30.0, subject: str = "") -> EmailMessage:
    """Wait until the sink holds a message for `address` (whose subject contains `subject`) and return it."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for msg in read_messages(stack.maildir):
            if msg["To"] == address and subject in msg["Subject"]:
                return msg
        assert loop.time() < deadline, f"no email for {address} within {timeout}s"
        await asyncio.sleep(0.1)


def token_from(msg: EmailMessage) -> str:
    text = msg.get_body(("plain",)).get_content()
    match = re.search(r"[?&]token=([A-Za-z0-9_\-]+)", text)
    assert match, f"no token link in: {text}"
    return match.group(1)


__all__ = ["PASSWORD", "email_to", "new_email", "token_from", "wait_for_messages"]


# --- journeys several test modules start from ---


async def register_and_verify(http: httpx.AsyncClient, stack: EmbeddedStack, email: str) -> dict:
    r = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Ada"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    msg = await email_to(stack, email)
    r = await http.post("/v1/auth/verify", json={"token": token_from(msg)})
    assert r.status_code == 200, r.text
    return accepted


async def login(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await http.post("/v1/auth/login", json={"email": email, "password": password})


def bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def owner_headers(http: httpx.AsyncClient, stack: EmbeddedStack) -> dict:
    email = new_email("owner")
    await register_and_verify(http, stack, email)
    return bearer((await login(http, email)).json())


async def wait_for_status(http: httpx.AsyncClient, headers: dict, tenant_id: str, wanted: set[str]) -> dict:
    for _ in range(300):
        r = await http.get(f"/v1/tenants/{tenant_id}", headers=headers)
        if r.status_code == 200 and r.json()["status"] in wanted:
            return r.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"tenant {tenant_id} never reached {wanted}: {r.status_code} {r.text}")

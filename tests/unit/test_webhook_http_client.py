"""The webhook worker's shared delivery client against a real local HTTP receiver: it connects only to the pinned
(checked) address, never by its own DNS lookup, and keeps the connection alive across requests."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from prognet_dev import free_port
from webhooks import signing
from webhooks.http_client import delivery_client, pinned
from webhooks.receiver import WebhookReceiver, serving
from webhooks.targets import Target

SECRET = signing.new_secret()


def signed_headers(body: bytes) -> dict[str, str]:
    return {**signing.headers([SECRET], str(uuid.uuid4()), int(time.time()), body), "content-type": "application/json"}


async def test_the_client_connects_to_the_pinned_address_by_name_and_reuses_the_connection():
    receiver = WebhookReceiver(secrets=[SECRET], out=None)
    port = free_port()
    async with serving(receiver, "127.0.0.1", port), delivery_client(5.0) as client:
        # `.invalid` never resolves (RFC 2606): only the pin can take the request to the receiver
        url = f"http://receiver.invalid:{port}/hook"
        target = Target(url=url, scheme="http", host="receiver.invalid", port=port, addresses=("127.0.0.1",))
        body = b'{"n":1}'
        for _ in range(3):
            with pinned(target):
                response = await client.post(url, content=body, headers=signed_headers(body))
            assert response.status_code == 200, response.text
        with pytest.raises(httpx.ConnectError, match="no checked address"):
            await client.post(f"http://127.0.0.1:{port}/hook", content=body, headers=signed_headers(body))
        other = Target(url=url, scheme="http", host="elsewhere.invalid", port=port, addresses=("127.0.0.1",))
        with pinned(other), pytest.raises(httpx.ConnectError, match="no checked address"):  # a pin for another host
            await client.post(f"http://127.0.0.1:{port}/hook", content=body, headers=signed_headers(body))
    assert [r.headers["host"] for r in receiver.delivered] == [f"receiver.invalid:{port}"] * 3
    assert len({r.peer for r in receiver.delivered}) == 1  # one kept-alive connection for all three


async def test_the_client_follows_no_redirect_and_reads_no_proxy_from_the_environment(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    client = delivery_client(5.0)
    try:
        assert client.follow_redirects is False and client.trust_env is False
    finally:
        await client.aclose()

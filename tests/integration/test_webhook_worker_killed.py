"""A worker SIGKILLed while a webhook attempt is in flight: the delivery is retried and arrives, at least once,
always as the same `webhook-id`, so a receiver that dedupes by it sees exactly one delivery."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import dataclass, field

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from models.contracts import WebhookDeliveryResult
from models.names import webhook_workflow_id
from prognet_dev import EmbeddedStack, free_port
from webhooks import signing
from webhooks.receiver import WebhookReceiver, serving

from .conftest import new_email, owner_headers, wait_for_status

HOLD_SECONDS = 2.0  # the first request is answered only this late: long after its sender was killed


@dataclass
class SlowFirstReceiver(WebhookReceiver):
    """Holds the first request before handling it as usual (it counts as delivered, but the answer goes nowhere)."""

    first_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> JSONResponse:
        if not self.first_arrived.is_set():
            await request.body()  # read while the sender is still connected
            self.first_arrived.set()
            await asyncio.sleep(HOLD_SECONDS)
        return await super().handle(request)


async def poll(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_worker_killed_mid_delivery_delivers_one_webhook_id(
    http: httpx.AsyncClient, stack: EmbeddedStack, temporal: Client
):
    assert stack.worker is not None
    headers = await owner_headers(http, stack)
    r = await http.post(
        "/v1/tenants", json={"name": "Hooked", "slug": f"hooked-{uuid.uuid4().hex[:8]}"}, headers=headers
    )
    assert r.status_code == 202, r.text
    tenant = r.json()["tenant_id"]
    await wait_for_status(http, headers, tenant, {"active"})

    receiver = SlowFirstReceiver(secrets=[], out=None)
    async with serving(receiver, "127.0.0.1", free_port()) as url:
        r = await http.post(
            f"/v1/tenants/{tenant}/webhook-endpoints",
            json={"url": f"{url}/in", "event_types": ["invitation.created"]},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        endpoint = r.json()
        receiver.secrets = [endpoint["secret"]]
        deliveries = f"/v1/tenants/{tenant}/webhook-endpoints/{endpoint['id']}/deliveries"

        r = await http.post(
            f"/v1/tenants/{tenant}/invitations", json={"email": new_email("invitee"), "role": "member"}, headers=headers
        )
        assert r.status_code == 202, r.text
        await asyncio.wait_for(receiver.first_arrived.wait(), 20)  # relay → dispatcher → delivery → attempt 1
        stack.worker.process.signal_group(signal.SIGKILL)  # while the receiver holds attempt 1 open
        await stack.worker.process.wait()
        await stack.worker.start()

        async def delivered() -> dict | None:
            r = await http.get(deliveries, headers=headers)
            assert r.status_code == 200, r.text
            done = [d for d in r.json()["items"] if d["status"] == "delivered"]
            return done[0] if done else None

        # attempt 1 is given up when its start-to-close timeout (WEBHOOK_TIMEOUT_SECONDS + 15 s) runs out
        row = await poll(delivered, timeout=30, what="the delivery to be retried and delivered")

    ids = [got.webhook_id for got in receiver.requests]
    assert len(ids) >= 2 and set(ids) == {row["id"]}, ids  # at least once, and always the same webhook-id
    assert len(receiver.delivered) == 1 and receiver.rejected == 0  # the receiver dedupes: one delivery
    now = int(time.time())
    for got in receiver.requests:  # each copy is freshly signed, and verifies
        assert signing.verify(endpoint["secret"], got.headers, got.raw, now=now) == row["id"]
        assert got.body["type"] == "invitation.created" and got.body["tenant_id"] == tenant
    assert len({got.raw for got in receiver.requests}) == 1  # the same body bytes every time

    # the answer recorded is the retry's (the duplicate), and only one delivery exists for the event
    assert row["last_status_code"] == 200 and '"duplicate"' in row["last_response_body"], row
    r = await http.get(deliveries, headers=headers)
    assert [d["id"] for d in r.json()["items"]] == [row["id"]]

    handle = temporal.get_workflow_handle(webhook_workflow_id(row["id"]), result_type=WebhookDeliveryResult)
    result = await handle.result()
    assert result.status == "delivered"
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(started) >= 2  # the lost attempt was retried by Temporal, not re-dispatched as a new delivery

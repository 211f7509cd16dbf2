"""Outbound-webhook test helpers shared by the webhook and TenantId tests: a webhook worker, dispatcher and real
receiver on their own task queue with a short retry schedule, and the endpoints API as a tenant admin calls it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from activities.webhooks import WebhookActivities
from models.event_stream import StreamEvent
from models.tables import DomainEvent
from prognet.settings import Settings
from prognet_dev import free_port
from tests.api.conftest import Person
from webhooks.dispatcher import WebhookDispatcher
from webhooks.receiver import WebhookReceiver, serving
from workers.main import webhook_worker

FAST = {"webhook_retry_schedule_seconds": [0, 0.2, 0.2], "webhook_timeout_seconds": 5.0}


@dataclass
class Hooks:
    receiver: WebhookReceiver
    url: str  # the receiver's base URL
    dispatcher: WebhookDispatcher
    engine: AsyncEngine
    client: Client


@contextlib.asynccontextmanager
async def running_hooks(
    temporal_settings: Settings, temporal_client: Client, engine: AsyncEngine, **overrides: object
) -> AsyncIterator[Hooks]:
    settings = temporal_settings.model_copy(update={**FAST, **overrides})
    task_queue = f"webhooks-{uuid.uuid4()}"
    receiver = WebhookReceiver(secrets=[], out=None)
    async with (
        WebhookActivities(engine, settings) as activities,
        webhook_worker(temporal_client, activities, task_queue=task_queue),
        serving(receiver, "127.0.0.1", free_port()) as url,
    ):
        yield Hooks(receiver, url, WebhookDispatcher(engine, temporal_client, task_queue), engine, temporal_client)


async def create_endpoint(api: httpx.AsyncClient, who: Person, tenant_id: str, url: str, **extra) -> dict:
    response = await api.post(
        f"/v1/tenants/{tenant_id}/webhook-endpoints", json={"url": url, **extra}, headers=who.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def as_stream_event(row: DomainEvent) -> StreamEvent:
    """A domain event row as the relay puts it on the stream."""
    return StreamEvent(
        seq=row.id or 0,
        event_id=row.event_id,
        type=row.type,
        version=row.version,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        actor_id=row.actor_id,
        workflow_id=row.workflow_id,
        occurred_at=row.occurred_at,
        payload=row.payload,
    )


async def poll(check, timeout: float = 15.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def delivery_in(api: httpx.AsyncClient, who: Person, tenant_id: str, endpoint_id: str, status: str) -> dict:
    async def check():
        response = await api.get(
            f"/v1/tenants/{tenant_id}/webhook-endpoints/{endpoint_id}/deliveries", headers=who.headers
        )
        assert response.status_code == 200, response.text
        items = [d for d in response.json()["items"] if d["status"] == status]
        return items[0] if items else None

    return await poll(check, what=f"a {status} delivery")

"""Retry policies come from settings per external service and are recorded in the saga's history when it starts:
a changed setting reaches the sagas started after the change, never one started before (nor its replay)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api.app import create_app
from models.names import tenant_workflow_id
from prognet.settings import CompensationRetrySetting, RetrySetting, Settings
from tests.api.conftest import person, wait_for_tenant


@asynccontextmanager
async def api_with(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second API process, started with other settings, on the same Temporal, database and worker."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            yield c


async def scheduled_retry_policies(client: Client, workflow_id: str) -> dict[str, tuple[float, float, float, int]]:
    """Each activity type's retry policy as its ActivityTaskScheduled event recorded it:
    (initial interval s, backoff, maximum interval s, maximum attempts)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    found = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            policy = attrs.retry_policy
            found[attrs.activity_type.name] = (
                policy.initial_interval.ToTimedelta().total_seconds(),
                policy.backoff_coefficient,
                policy.maximum_interval.ToTimedelta().total_seconds(),
                policy.maximum_attempts,
            )
    return found


async def test_a_changed_retry_setting_applies_to_sagas_started_after_it_only(
    api, app_engine, temporal_settings, temporal_client
):
    owner = await person(api, app_engine)
    before = await api.post(
        "/v1/tenants", json={"name": "Before", "slug": f"rp-{uuid.uuid4().hex[:10]}"}, headers=owner.headers
    )
    assert before.status_code == 202, before.text
    tenant_before = before.json()["tenant_id"]

    changed = temporal_settings.model_copy(
        update={
            "retry_database": RetrySetting(initial_interval_seconds=2, maximum_interval_seconds=20, maximum_attempts=7),
            "retry_stripe": RetrySetting(initial_interval_seconds=3, backoff_coefficient=1.5, maximum_attempts=9),
            "retry_compensation_stripe": CompensationRetrySetting(maximum_attempts=3),
        }
    )
    async with api_with(changed) as changed_api:
        after = await changed_api.post(
            "/v1/tenants", json={"name": "After", "slug": f"rp-{uuid.uuid4().hex[:10]}"}, headers=owner.headers
        )
        assert after.status_code == 202, after.text
    tenant_after = after.json()["tenant_id"]
    await wait_for_tenant(api, owner, tenant_before)
    await wait_for_tenant(api, owner, tenant_after)

    old = await scheduled_retry_policies(temporal_client, tenant_workflow_id(tenant_before))
    new = await scheduled_retry_policies(temporal_client, tenant_workflow_id(tenant_after))
    # the defaults (RETRY_DATABASE, RETRY_STRIPE unset): 1 s, x2, at most 60 s apart, without limit
    assert old["tenants.create_tenant"] == old["billing.create_stripe_customer"] == (1.0, 2.0, 60.0, 0)
    # per service: the database steps and the Stripe step each got their own setting
    assert new["tenants.create_tenant"] == new["tenants.activate_tenant"] == (2.0, 2.0, 20.0, 7)
    assert new["billing.create_stripe_customer"] == (3.0, 1.5, 60.0, 9)
    # the input records every policy, compensations included (none ran: the saga completed)
    description = await temporal_client.get_workflow_handle(tenant_workflow_id(tenant_after)).fetch_history()
    started = description.events[0].workflow_execution_started_event_attributes
    (arg,) = await temporal_client.data_converter.decode(started.input.payloads, [dict])
    assert arg["retry_policies"]["compensation_stripe"] == {
        "initial_interval_seconds": 1.0,
        "backoff_coefficient": 2.0,
        "maximum_interval_seconds": 30.0,
        "maximum_attempts": 3,
    }

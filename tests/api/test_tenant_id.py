"""Every workflow a tenant causes is found by `TenantId` in the Temporal UI, on the real stack.

Two tenants, one per way a tenant comes to be: one goes through provisioning, an outbound webhook endpoint, an
invitation and a paid subscription (with a billing firing triggered from its Schedule); the other is a paid
sign-up. Every workflow each caused is collected from the ids the API (or the webhook dispatcher) answered, the
workflows their histories started (children, and emails handed over by a local activity), and the Schedule's
triggers (found by `SubscriptionId`). Each must carry
`TenantId`. Every workflow type the worker runs is either among those seen here or named as belonging to no tenant,
so a workflow type added later is checked too.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlmodel import select
from temporalio.client import Client

from models.db import transaction
from models.names import billing_cycle_workflow_id, billing_schedule_id, tenant_workflow_id
from models.tables import DomainEvent
from tests.api.conftest import bearer, create_tenant, invite, person, wait_for_tenant, wait_for_token
from tests.support.signup import signup_body
from tests.support.subscriptions import end, subscribe, wait_subscription
from tests.support.webhooks import as_stream_event, create_endpoint, delivery_in, poll, running_hooks
from tests.support.workflows import started_workflows
from workers.main import ALL_WORKFLOWS

# What a tenant's own journey causes, and what a paid sign-up causes (its registration is the tenant's too)
TENANT_JOURNEY_TYPES = {
    "TenantProvisioning",
    "Invitation",
    "Subscription",
    "BillingCycle",
    "BillingTrigger",
    "EmailDelivery",
    "WebhookDelivery",
}
PAID_SIGNUP_TYPES = {
    "PaidSignup",
    "Registration",
    "TenantProvisioning",
    "BillingCycle",
    "BillingTrigger",
    "Subscription",
    "EmailDelivery",
}
# Workflows that belong to no tenant: a user's own email change, the platform's alerting
NOT_A_TENANTS = {"EmailChange": "a user's", "AlertEvaluator": "the platform's", "Incident": "the platform's"}


async def caused_by(client: Client, roots: list[str]) -> set[str]:
    """`roots` and every workflow they started (children, emails handed over by a local activity), transitively."""
    found: set[str] = set()
    todo = list(roots)
    while todo:
        wid = todo.pop()
        if wid not in found:
            found.add(wid)
            todo.extend(await started_workflows(client, wid))
    return found


async def ids_where(client: Client, query: str) -> set[str]:
    return {w.id async for w in client.list_workflows(query)}


async def collect(client: Client, tenant_id: str, sub_id: str, roots: list[str], at_least: int) -> tuple[set, set]:
    """What the tenant caused and what `TenantId` finds, once at least `at_least` caused workflows are seen and all
    are found (visibility lags a little), or after 30 s."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        triggers = await ids_where(client, f"WorkflowType = 'BillingTrigger' AND SubscriptionId = '{sub_id}'")
        caused = await caused_by(client, roots) | triggers
        found = await ids_where(client, f"TenantId = '{tenant_id}'")
        complete = triggers and billing_cycle_workflow_id(sub_id, 0) in caused and len(caused) >= at_least
        if (complete and caused <= found) or asyncio.get_running_loop().time() > deadline:
            return caused, found
        await asyncio.sleep(0.5)


async def workflow_types(client: Client, ids: set[str]) -> set[str]:
    return {(await client.get_workflow_handle(wid).describe()).workflow_type for wid in ids}


def test_every_workflow_type_is_checked_here_or_belongs_to_no_tenant():
    registered = {w.__temporal_workflow_definition.name for w in ALL_WORKFLOWS}
    checked = TENANT_JOURNEY_TYPES | PAID_SIGNUP_TYPES
    assert registered - checked == set(NOT_A_TENANTS), "a workflow type neither checked for TenantId nor exempt"


async def test_every_workflow_of_a_tenant_carries_tenant_id(
    api, app_engine, temporal_client: Client, temporal_settings
):
    owner = await person(api, app_engine)
    tenant = await create_tenant(api, owner)
    tenant_id = tenant["tenant_id"]
    assert tenant["workflow_id"] == tenant_workflow_id(tenant_id)
    await wait_for_tenant(api, owner, tenant_id)
    async with running_hooks(temporal_settings, temporal_client, app_engine) as hooks:
        endpoint = await create_endpoint(api, owner, tenant_id, f"{hooks.url}/in", event_types=["invitation.*"])
        hooks.receiver.secrets = [endpoint["secret"]]
        invitation = await invite(api, owner, tenant_id, "ids-only@example.com")

        # the relay does not run here: the invitation's own event, read back, is dispatched as the relay would
        async def invitation_created() -> DomainEvent | None:
            async with transaction(app_engine, tenant_id=uuid.UUID(tenant_id)) as db:
                return (await db.exec(select(DomainEvent).where(DomainEvent.type == "invitation.created"))).first()

        row = await poll(invitation_created, what="the invitation.created event")
        deliveries = await hooks.dispatcher.dispatch(as_stream_event(row))
        assert len(deliveries) == 1
        await delivery_in(api, owner, tenant_id, endpoint["id"], "delivered")
    sub = await subscribe(api, owner, tenant_id)
    sub_id = sub["subscription_id"]
    await wait_subscription(
        api, owner, tenant_id, sub_id, lambda s: s["status"] == "active" and s["invoices"][0]["status"] == "paid"
    )
    # a firing of the billing Schedule starts a BillingTrigger (the subscription holds an early one)
    await temporal_client.get_schedule_handle(billing_schedule_id(sub_id)).trigger()

    roots = [tenant["workflow_id"], invitation["workflow_id"], sub["workflow_id"], *deliveries]
    # the welcome, invitation and receipt emails, the cycle and a trigger at least
    caused, found = await collect(temporal_client, tenant_id, sub_id, roots, at_least=len(roots) + 5)
    await end(api, owner, tenant_id, sub_id)
    assert TENANT_JOURNEY_TYPES - await workflow_types(temporal_client, caused) == set(), "a type not caused here"
    assert len([w for w in caused if w.startswith("email-")]) >= 3  # welcome, invitation, receipt
    assert caused - found == set(), "workflows of the tenant that TenantId does not find"
    # ids only in the query's results: no address was used as an id
    assert not [w for w in found if "@" in w]


async def test_every_workflow_of_a_paid_signup_carries_tenant_id(api, temporal_app, temporal_client: Client):
    body = signup_body()
    response = await api.post("/v1/signup", json=body)
    assert response.status_code == 201, response.text
    answer = response.json()
    tenant_id, sub_id = answer["tenant_id"], answer["subscription_id"]
    await temporal_client.get_schedule_handle(billing_schedule_id(sub_id)).trigger()

    # the sign-up, its registration, tenant, first cycle and subscription; verification, welcome, receipt emails
    caused, found = await collect(temporal_client, tenant_id, sub_id, [answer["workflow_id"]], at_least=8)
    token = await wait_for_token(temporal_app, answer["user_id"])
    assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
    login = await api.post("/v1/auth/login", json={"email": body["email"], "password": body["password"]})
    ended = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/cancel",
        json={"at_period_end": False},
        headers=bearer(login.json()["access_token"]),
    )
    assert ended.status_code == 200, ended.text
    assert PAID_SIGNUP_TYPES - await workflow_types(temporal_client, caused) == set(), "a type not caused here"
    assert len([w for w in caused if w.startswith("email-")]) >= 3
    assert caused - found == set(), "workflows of the paid sign-up that TenantId does not find"
    assert not [w for w in found if "@" in w]

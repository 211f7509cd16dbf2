"""Every workflow a tenant causes is found by `TenantId` in the Temporal UI, on the real stack.

One tenant goes through provisioning, an invitation and a paid subscription (with a billing firing triggered
from its Schedule); every workflow that caused is collected from the ids the API answered, the children
their histories started, and the Schedule's triggers (found by `SubscriptionId`). Each must carry `TenantId`.
"""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from models.names import billing_cycle_workflow_id, billing_schedule_id, tenant_workflow_id
from tests.api.conftest import create_tenant, invite, person, wait_for_tenant
from tests.support.subscriptions import end, subscribe, wait_subscription


async def children(client: Client, workflow_id: str) -> list[str]:
    """The workflows this one started as children (emails, billing cycles), from its history."""
    started = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            started.append(event.start_child_workflow_execution_initiated_event_attributes.workflow_id)
    return started


async def caused_by(client: Client, roots: list[str]) -> set[str]:
    """`roots` and every child they started, transitively."""
    found: set[str] = set()
    todo = list(roots)
    while todo:
        wid = todo.pop()
        if wid not in found:
            found.add(wid)
            todo.extend(await children(client, wid))
    return found


async def ids_where(client: Client, query: str) -> set[str]:
    return {w.id async for w in client.list_workflows(query)}


async def test_every_workflow_of_a_tenant_carries_tenant_id(api, app_engine, temporal_client: Client):
    owner = await person(api, app_engine)
    tenant = await create_tenant(api, owner)
    tenant_id = tenant["tenant_id"]
    assert tenant["workflow_id"] == tenant_workflow_id(tenant_id)
    await wait_for_tenant(api, owner, tenant_id)
    invitation = await invite(api, owner, tenant_id, "ids-only@example.com")
    sub = await subscribe(api, owner, tenant_id)
    sub_id = sub["subscription_id"]
    await wait_subscription(
        api, owner, tenant_id, sub_id, lambda s: s["status"] == "active" and s["invoices"][0]["status"] == "paid"
    )
    # a firing of the billing Schedule starts a BillingTrigger (the subscription holds an early one)
    await temporal_client.get_schedule_handle(billing_schedule_id(sub_id)).trigger()

    roots = [tenant["workflow_id"], invitation["workflow_id"], sub["workflow_id"]]
    expected_children = {billing_cycle_workflow_id(sub_id, 0)}
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        triggers = await ids_where(temporal_client, f"WorkflowType = 'BillingTrigger' AND SubscriptionId = '{sub_id}'")
        caused = await caused_by(temporal_client, roots) | triggers
        found = await ids_where(temporal_client, f"TenantId = '{tenant_id}'")
        # the welcome, invitation and receipt emails, the cycle and a trigger at least; visibility lags a little
        complete = triggers and expected_children <= caused and len(caused) >= len(roots) + 5
        if complete and caused <= found:
            break
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)

    await end(api, owner, tenant_id, sub_id)
    kinds = {(await temporal_client.get_workflow_handle(wid).describe()).workflow_type for wid in caused}
    assert {
        "TenantProvisioning",
        "Invitation",
        "Subscription",
        "BillingCycle",
        "BillingTrigger",
        "EmailDelivery",
    } <= kinds
    assert len([w for w in caused if w.startswith("email-")]) >= 3  # welcome, invitation, receipt
    assert caused - found == set(), "workflows of the tenant that TenantId does not find"
    # ids only in the query's results: no address was used as an id
    assert not [w for w in found if "@" in w]

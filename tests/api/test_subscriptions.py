"""Subscriptions over HTTP on the real stack: the worker's real billing activities, the Stripe sandbox, Schedules.

The 60-second dev plan has no trial, so subscribing charges the first period at once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlmodel import select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.tenants import TenantActivities
from models.billing_cycle_contracts import SuspendTenant
from models.db import transaction
from models.names import (
    SA_SUBSCRIPTION_ID,
    SA_TENANT_ID,
    billing_cycle_workflow_id,
    billing_schedule_id,
    email_message_id,
)
from models.tables import DomainEvent
from prognet_dev import read_messages
from tests.api.conftest import active_tenant, add_member, assert_problem, person
from tests.support.subscriptions import PLAN, end, subscribe, wait_subscription


async def test_subscribe_charges_the_first_period_and_schedules_the_next(
    api, app_engine, temporal_client: Client, stripe
):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    accepted = await subscribe(api, owner, tenant_id)
    sub_id = accepted["subscription_id"]
    assert accepted["status"] == "incomplete" and accepted["workflow_id"] == f"subscription-{sub_id}"
    assert accepted["links"]["schedule"] == billing_schedule_id(sub_id)

    sub = await wait_subscription(
        api,
        owner,
        tenant_id,
        sub_id,
        lambda s: s["status"] == "active" and s["invoices"] and s["invoices"][0]["status"] == "paid",
    )
    [invoice] = sub["invoices"]
    assert (invoice["number"], invoice["amount"], invoice["currency"]) == (1, 100, "eur")
    assert sub["live"]["cycles_paid"] == 1 and sub["plan_id"] == PLAN
    # exactly one successful PaymentIntent, routed back to its cycle by metadata
    succeeded = [
        pi for pi in await stripe.payment_intents(status="succeeded") if pi["metadata"].get("subscription_id") == sub_id
    ]
    assert [pi["id"] for pi in succeeded] == [invoice["payment_intent_id"]]
    assert succeeded[0]["metadata"]["workflow_id"] == billing_cycle_workflow_id(sub_id, 0)
    # operators: the cycle carries TenantId and SubscriptionId; the Schedule exists and fires every 60 s
    cycle = await temporal_client.get_workflow_handle(billing_cycle_workflow_id(sub_id, 0)).describe()
    assert cycle.typed_search_attributes.get(SA_TENANT_ID) == tenant_id
    assert cycle.typed_search_attributes.get(SA_SUBSCRIPTION_ID) == sub_id
    schedule = await temporal_client.get_schedule_handle(billing_schedule_id(sub_id)).describe()
    assert [i.every.total_seconds() for i in schedule.schedule.spec.intervals] == [60.0]
    assert schedule.schedule.action.workflow == "BillingTrigger"
    async with transaction(app_engine, tenant_id=uuid.UUID(tenant_id)) as db:
        events = (await db.exec(select(DomainEvent.type).where(DomainEvent.tenant_id == uuid.UUID(tenant_id)))).all()
    assert {"invoice.issued", "invoice.paid", "subscription.active"} <= set(events)

    # a second live subscription is refused by the database's partial unique index
    again = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions",
        json={"plan": PLAN, "payment_method": "pm_card_visa"},
        headers=owner.headers,
    )
    assert_problem(again, 409, "subscription-exists")
    ended = await end(api, owner, tenant_id, sub_id)
    assert (ended["canceled_at"] and ended["live"] is None) or ended["live"]["status"] == "canceled"


async def test_a_declined_card_goes_past_due_saying_why_and_a_new_payment_method_pays_at_once(api, app_engine, stripe):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    sub_id = (await subscribe(api, owner, tenant_id, "pm_card_chargeDeclinedInsufficientFunds"))["subscription_id"]
    past_due = await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "past_due")
    [invoice] = past_due["invoices"]
    assert invoice["status"] == "open"
    # why, as soon as it shows past due: the decline, the attempts so far, when the next one is due (day 1 of
    # the dunning schedule, counted from the failure) and the declined PaymentIntent
    assert (invoice["decline_code"], invoice["attempts"]) == ("insufficient_funds", 1)
    retry_in = datetime.fromisoformat(invoice["next_retry_at"]) - datetime.fromisoformat(invoice["created_at"])
    assert timedelta(days=1) <= retry_in < timedelta(days=1, minutes=1)
    [declined] = [pi for pi in await stripe.payment_intents() if pi["metadata"].get("subscription_id") == sub_id]
    assert invoice["payment_intent_id"] == declined["id"] and declined["status"] == "requires_payment_method"
    listed = await api.get(f"/v1/tenants/{tenant_id}/invoices?subscription_id={sub_id}", headers=owner.headers)
    assert listed.status_code == 200 and listed.json() == [invoice]

    response = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/payment-method",
        json={"payment_method": "pm_card_visa"},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    paid = await wait_subscription(
        api, owner, tenant_id, sub_id, lambda s: s["status"] == "active" and s["invoices"][0]["status"] == "paid"
    )
    assert paid["payment_method"] == "pm_card_visa"
    intents = [pi for pi in await stripe.payment_intents() if pi["metadata"].get("subscription_id") == sub_id]
    assert sorted(pi["status"] for pi in intents) == ["requires_payment_method", "succeeded"]
    declined = next(pi for pi in intents if pi["status"] != "succeeded")
    assert declined["last_payment_error"]["decline_code"] == "insufficient_funds"
    [invoice] = paid["invoices"]  # paid by the second attempt; the first one's decline stays on record
    succeeded = next(pi for pi in intents if pi["status"] == "succeeded")
    assert (invoice["payment_intent_id"], invoice["attempts"], invoice["next_retry_at"]) == (succeeded["id"], 2, None)
    assert invoice["decline_code"] == "insufficient_funds"
    await end(api, owner, tenant_id, sub_id)


async def delivered(maildir: Path, message_id: uuid.UUID, timeout: float = 20.0) -> EmailMessage:
    """The message of this EmailRequest id, once the SMTP sink has it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for msg in read_messages(maildir):
            if str(message_id) in str(msg.get("Message-ID", "")):
                return msg
        assert asyncio.get_running_loop().time() < deadline, f"no message {message_id} was delivered"
        await asyncio.sleep(0.2)


async def test_receipts_go_to_the_billing_email_or_to_the_subscriber_when_the_tenant_has_none(
    api, app_engine, services
):
    owner = await person(api, app_engine)
    billing_email = f"billing-{uuid.uuid4().hex[:8]}@acme.example"
    with_billing = await active_tenant(api, owner, billing_email=billing_email)
    without = await active_tenant(api, owner)
    subscriptions = {t: (await subscribe(api, owner, t))["subscription_id"] for t in (with_billing, without)}
    receipts = {}
    for tenant_id, sub_id in subscriptions.items():
        await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
        receipt_id = email_message_id(billing_cycle_workflow_id(sub_id, 0), "receipt")
        receipts[tenant_id] = await delivered(services.maildir, receipt_id)
    assert receipts[with_billing]["To"] == billing_email  # where invoices go; no copy to the subscriber
    assert receipts[with_billing]["Subject"] == "Receipt for invoice 1"
    assert receipts[without]["To"] == owner.email
    sent_to = [str(m["To"]) for m in read_messages(services.maildir) if "Receipt for invoice" in str(m["Subject"])]
    assert sent_to.count(owner.email) == 1 and sent_to.count(billing_email) == 1
    for tenant_id, sub_id in subscriptions.items():
        await end(api, owner, tenant_id, sub_id)


async def test_cancel_now_refunds_the_unused_part_of_the_period(api, app_engine, stripe):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    sub_id = (await subscribe(api, owner, tenant_id))["subscription_id"]
    await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
    canceled = await end(api, owner, tenant_id, sub_id)
    pi_id = canceled["invoices"][0]["payment_intent_id"]
    refunds = [r for r in await stripe.objects("refund") if r["payment_intent"] == pi_id]
    assert len(refunds) == 1 and 0 < refunds[0]["amount"] <= 100
    after = await api.post(f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/cancel", json={}, headers=owner.headers)
    assert_problem(after, 409, "subscription-ended")


async def test_commands_answer_with_the_state_they_left_and_what_cannot_apply_is_refused(api, app_engine):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    sub_id = (await subscribe(api, owner, tenant_id))["subscription_id"]
    await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
    url = f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}"
    same = await api.post(f"{url}/change-plan", json={"plan": PLAN}, headers=owner.headers)
    assert_problem(same, 409, "plan-unchanged")
    # cheaper per unit of time: a downgrade, applied at the period end
    changed = await api.post(f"{url}/change-plan", json={"plan": "starter-monthly"}, headers=owner.headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["live"]["pending_plan"]["id"] == "starter-monthly"
    assert changed.json()["status"] == "active" and changed.json()["links"]["self"] == url
    await end(api, owner, tenant_id, sub_id)
    for command, body in [
        ("change-plan", {"plan": "team-monthly"}),
        ("payment-method", {"payment_method": "pm_card_visa"}),
    ]:
        assert_problem(await api.post(f"{url}/{command}", json=body, headers=owner.headers), 409, "subscription-ended")


async def test_bad_requests_and_other_tenants(api, app_engine):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    url = f"/v1/tenants/{tenant_id}/subscriptions"
    assert_problem(
        await api.post(url, json={"plan": "no-such-plan", "payment_method": "pm_card_visa"}, headers=owner.headers),
        422,
        "unknown-plan",
    )
    assert_problem(
        await api.post(url, json={"plan": PLAN, "payment_method": "4242424242424242"}, headers=owner.headers),
        422,
        "validation-failed",
    )
    assert_problem(await api.post(url, json={"plan": PLAN}, headers=owner.headers), 422, "validation-failed")
    member = await person(api, app_engine)
    await add_member(app_engine, tenant_id, member.id, "member")
    assert_problem(
        await api.post(url, json={"plan": PLAN, "payment_method": "pm_card_visa"}, headers=member.headers),
        403,
        "forbidden",
    )
    stranger = await person(api, app_engine)
    other_tenant = await active_tenant(api, stranger)
    assert_problem(await api.get(url, headers=stranger.headers), 404, "not-found")
    assert_problem(
        await api.get(f"/v1/tenants/{other_tenant}/subscriptions/{uuid.uuid4()}", headers=stranger.headers),
        404,
        "not-found",
    )
    assert (await api.get(f"/v1/tenants/{tenant_id}/invoices", headers=owner.headers)).json() == []


async def test_a_suspended_tenant_shows_as_such_and_a_paid_new_subscription_lifts_it(api, app_engine):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    # what an unpaid period does to its tenant
    await ActivityEnvironment().run(
        TenantActivities(app_engine).suspend_tenant,
        SuspendTenant(
            tenant_id=uuid.UUID(tenant_id), subscription_id=uuid.uuid4(), reason="period 3 unpaid", workflow_id="w"
        ),
    )
    shown = await api.get(f"/v1/tenants/{tenant_id}", headers=owner.headers)
    assert shown.status_code == 200 and shown.json()["status"] == "suspended"
    listed = await api.get("/v1/tenants", headers=owner.headers)
    assert listed.status_code == 200 and [t["status"] for t in listed.json()] == ["suspended"]

    sub_id = (await subscribe(api, owner, tenant_id))["subscription_id"]
    await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
    assert (await api.get(f"/v1/tenants/{tenant_id}", headers=owner.headers)).json()["status"] == "active"
    await end(api, owner, tenant_id, sub_id)


async def test_subscribing_while_temporal_is_down_writes_nothing(api, app_engine, temporal_app):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)

    class Down:
        async def get(self):
            from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem

            raise Problem(WORKFLOW_ENGINE_UNAVAILABLE, "down")

    real = temporal_app.state.temporal
    temporal_app.state.temporal = Down()
    try:
        response = await api.post(
            f"/v1/tenants/{tenant_id}/subscriptions",
            json={"plan": PLAN, "payment_method": "pm_card_visa"},
            headers=owner.headers,
        )
    finally:
        temporal_app.state.temporal = real
    assert_problem(response, 503, "workflow-engine-unavailable")
    assert (await api.get(f"/v1/tenants/{tenant_id}/subscriptions", headers=owner.headers)).json() == []
    sub_id = (await subscribe(api, owner, tenant_id))["subscription_id"]  # nothing blocks a later subscribe
    await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
    await end(api, owner, tenant_id, sub_id)


async def test_operators_pause_and_trigger_the_schedule_and_it_goes_when_the_subscription_ends(
    api, app_engine, temporal_client: Client
):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    sub_id = (await subscribe(api, owner, tenant_id))["subscription_id"]
    await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "active")
    schedule = temporal_client.get_schedule_handle(billing_schedule_id(sub_id))
    await schedule.pause(note="operator: hold billing")
    assert (await schedule.describe()).schedule.state.paused

    await schedule.trigger()  # "Trigger now" in the UI: a BillingTrigger signals start_cycle
    deadline = asyncio.get_running_loop().time() + 20
    while not (actions := (await schedule.describe()).info.recent_actions):
        assert asyncio.get_running_loop().time() < deadline, "the triggered action never ran"
        await asyncio.sleep(0.2)
    started = actions[-1].action
    trigger = temporal_client.get_workflow_handle(started.workflow_id, run_id=started.first_execution_run_id)
    assert await trigger.result() == f"start_cycle sent to subscription-{sub_id}"

    await end(api, owner, tenant_id, sub_id)
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # the ended subscription deletes its Schedule
        try:
            await schedule.describe()
        except RPCError as exc:
            assert exc.status == RPCStatusCode.NOT_FOUND
            break
        assert asyncio.get_running_loop().time() < deadline, "the schedule outlived its subscription"
        await asyncio.sleep(0.2)


async def test_subscribe_with_an_idempotency_key_replays_and_refuses_another_body(api, app_engine):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    url, key = f"/v1/tenants/{tenant_id}/subscriptions", {"Idempotency-Key": f"sub-{uuid.uuid4()}"}
    body = {"plan": PLAN, "payment_method": "pm_card_visa"}
    first = await api.post(url, json=body, headers={**owner.headers, **key})
    assert first.status_code == 202, first.text
    again = await api.post(url, json=body, headers={**owner.headers, **key})
    assert again.status_code == 202, again.text
    assert again.json()["subscription_id"] == first.json()["subscription_id"]  # the same one, not a 409
    assert first.headers["Location"] == f"{url}/{first.json()['subscription_id']}" == again.headers["Location"]
    other = await api.post(url, json={**body, "plan": "starter-monthly"}, headers={**owner.headers, **key})
    assert_problem(other, 422, "idempotency-key-reused")
    sub_id = first.json()["subscription_id"]
    await end(api, owner, tenant_id, sub_id)
    after = await api.post(url, json=body, headers={**owner.headers, **key})  # its workflow has closed
    assert after.status_code == 202, after.text
    assert after.json()["subscription_id"] == sub_id and after.json()["status"] == "canceled"
    assert_problem(
        await api.post(url, json={**body, "plan": "starter-monthly"}, headers={**owner.headers, **key}),
        422,
        "idempotency-key-reused",
    )

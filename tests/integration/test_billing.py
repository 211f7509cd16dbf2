"""Subscription billing on the real embedded stack: the worker and the API as child processes, a real Temporal
dev server driving cycles through a Schedule, the Stripe sandbox confirming PaymentIntents and POSTing signed
webhooks to the API.

- a subscription on the 60-second plan bills two periods while the worker is killed and restarted in between:
  exactly two successful PaymentIntents, invoices 1 and 2 paid (the only test that waits for a real period);
- duplicate and out-of-order webhook deliveries around a decline → new payment method → success change nothing,
  and a resent stale `payment_intent.payment_failed` is a reported duplicate;
- forged, stale, tampered and unsigned webhooks are refused with 400 and leave a running cycle untouched.

The integration stack does not set BILLING_POLL_SECONDS (300 s): the sandbox answers a charge synchronously, so
every outcome here comes from the create call, and the webhooks that follow must be harmless.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api.routers.stripe_webhooks import dedupe_key
from models.billing_cycle_contracts import BillingCycleResult, BillingCycleState
from models.names import (
    QUERY_BILLING_CYCLE_STATE,
    STRIPE_WEBHOOK_EVENTS,
    billing_cycle_workflow_id,
    billing_schedule_id,
)
from prognet_dev import EmbeddedStack, StripeSandbox
from prognet_dev.stripe_sandbox import signature_header
from tests.integration.conftest import owner_headers, wait_for_status

PLAN = "dev-minutely"  # 60-second periods, no trial: subscribing charges period 0 at once
PERIOD_SECONDS = 60
WEBHOOK_PATH = "/v1/webhooks/stripe"


# --- helpers ---------------------------------------------------------------------------------------------------


def sandbox_of(stack: EmbeddedStack) -> StripeSandbox:
    assert stack.stripe is not None and stack.stripe.sandbox is not None, "the stack runs no Stripe sandbox"
    return stack.stripe.sandbox


async def new_tenant(http: httpx.AsyncClient, stack: EmbeddedStack) -> tuple[dict, str]:
    """A verified, logged-in owner and their active tenant (with its Stripe customer)."""
    headers = await owner_headers(http, stack)
    r = await http.post(
        "/v1/tenants", json={"name": "Billing Co", "slug": f"bill-{uuid.uuid4().hex[:10]}"}, headers=headers
    )
    assert r.status_code == 202, r.text
    tenant_id = r.json()["tenant_id"]
    await wait_for_status(http, headers, tenant_id, {"active"})
    return headers, tenant_id


async def subscribe(http: httpx.AsyncClient, headers: dict, tenant_id: str, payment_method: str) -> str:
    r = await http.post(
        f"/v1/tenants/{tenant_id}/subscriptions", json={"plan": PLAN, "payment_method": payment_method}, headers=headers
    )
    assert r.status_code == 202, r.text
    return r.json()["subscription_id"]


async def wait_subscription(
    http: httpx.AsyncClient,
    headers: dict,
    tenant_id: str,
    sub_id: str,
    predicate: Callable[[dict], bool],
    timeout: float = 30.0,
) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = await http.get(f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}", headers=headers)
        assert r.status_code == 200, r.text
        if predicate(r.json()):
            return r.json()
        assert loop.time() < deadline, f"subscription {sub_id} never got there within {timeout}s: {r.text}"
        await asyncio.sleep(0.2)


def invoice_statuses(sub: dict) -> list[tuple[int, str]]:
    return [(i["number"], i["status"]) for i in sub["invoices"]]


async def cancel_now(http: httpx.AsyncClient, headers: dict, tenant_id: str, sub_id: str) -> dict:
    r = await http.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/cancel", json={"at_period_end": False}, headers=headers
    )
    assert r.status_code == 200, r.text
    return await wait_subscription(http, headers, tenant_id, sub_id, lambda s: s["status"] == "canceled")


def intents_of(sandbox: StripeSandbox, sub_id: str) -> list[dict]:
    """Every PaymentIntent the sandbox holds for the subscription, oldest first."""
    return list(reversed([pi for pi in sandbox.payment_intents() if pi["metadata"].get("subscription_id") == sub_id]))


def subject_of(event: dict) -> str | None:
    """The PaymentIntent an event is about (a PaymentIntent event or a charge event)."""
    obj = event["data"]["object"]
    return obj["id"] if obj.get("object") == "payment_intent" else obj.get("payment_intent")


async def cycle_state(temporal: Client, workflow_id: str) -> BillingCycleState:
    return await temporal.get_workflow_handle(workflow_id).query(
        QUERY_BILLING_CYCLE_STATE, result_type=BillingCycleState
    )


@dataclass
class Answer:
    event: dict[str, Any]
    status: int
    body: dict[str, Any]


@dataclass
class WebhookRelay:
    """Sits between the sandbox and the API: forwards every delivery byte for byte (its Stripe-Signature too) to
    the API's webhook endpoint and keeps what the API answered, which the sandbox's delivery log does not."""

    target: str
    answers: list[Answer] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{WEBHOOK_PATH}"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=30)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
            forwarded = {k: headers[k] for k in ("content-type", "stripe-signature", "user-agent") if k in headers}
            assert self._client is not None
            response = await self._client.post(self.target, content=payload, headers=forwarded)
            try:
                body = response.json()
            except ValueError:
                body = {"raw": response.text}
            self.answers.append(Answer(json.loads(payload), response.status_code, body))
            out = response.content
            writer.write(
                f"HTTP/1.1 {response.status_code} Relayed\r\ncontent-type: "
                f"{response.headers.get('content-type', 'application/json')}\r\ncontent-length: {len(out)}"
                "\r\nconnection: close\r\n\r\n".encode()
                + out
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def about(self, intent_ids: set[str]) -> list[Answer]:
        return [a for a in self.answers if subject_of(a.event) in intent_ids]


@pytest.fixture
async def relay(stack: EmbeddedStack) -> AsyncIterator[WebhookRelay]:
    """The sandbox delivers through a WebhookRelay for the test; afterwards straight to the API again, in normal
    mode, with anything still held released."""
    sandbox = sandbox_of(stack)
    assert stack.stripe_webhook_url and stack.stripe_webhook_url.endswith(WEBHOOK_PATH)
    relay = WebhookRelay(stack.stripe_webhook_url)
    await relay.start()
    try:
        yield relay
    finally:
        sandbox.configure_webhooks(url=stack.stripe_webhook_url, mode="normal", hold=False)
        await sandbox.wait_for_webhooks(timeout=30)
        await relay.stop()


@pytest.fixture
async def redis(stack: EmbeddedStack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


async def paid_events_and_their_invoices(stack: EmbeddedStack, sub_id: str) -> list[tuple[str, bool]]:
    """Per `invoice.paid` event of the subscription: its cycle, and whether the transaction that wrote it is the
    one that last wrote its invoice row (the paid mark), compared as 32-bit xids."""
    from sqlalchemy import text

    from models.db import make_engine

    assert stack.migration_database_url
    engine = make_engine(stack.migration_database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT e.workflow_id, (e.txid::text::bigint % 4294967296) = i.xmin::text::bigint AS same "
                        "FROM domain_events e JOIN invoices i ON i.id::text = e.aggregate_id "
                        "WHERE e.type = 'invoice.paid' AND i.subscription_id::text = :sub ORDER BY i.number"
                    ),
                    {"sub": sub_id},
                )
            ).all()
    finally:
        await engine.dispose()
    return [(r.workflow_id, r.same) for r in rows]


# --- 1. two periods with a worker restart in between -------------------------------------------------------------


async def test_two_periods_bill_once_each_across_a_worker_restart(http, stack: EmbeddedStack, temporal: Client):
    sandbox = sandbox_of(stack)
    headers, tenant_id = await new_tenant(http, stack)
    sub_id = await subscribe(http, headers, tenant_id, "pm_card_visa")
    first = await wait_subscription(
        http, headers, tenant_id, sub_id, lambda s: s["status"] == "active" and invoice_statuses(s) == [(1, "paid")]
    )
    period_end = datetime.fromisoformat(first["current_period_end"])
    assert (period_end - datetime.fromisoformat(first["current_period_start"])).total_seconds() == PERIOD_SECONDS
    # the first cycle finished (its result is the paid invoice) before the worker goes away
    result = await temporal.get_workflow_handle(
        billing_cycle_workflow_id(sub_id, 0), result_type=BillingCycleResult
    ).result()
    assert (result.status, result.invoice_number, result.attempts) == ("paid", 1, 1)
    # Stripe's success event found the note of the cycle's own charge call, so no signal came in while the one
    # workflow task that ended the cycle ran (one would have made the server refuse that task and run it again)
    history = await temporal.get_workflow_handle(billing_cycle_workflow_id(sub_id, 0)).fetch_history()
    kinds = [EventType.Name(e.event_type) for e in history.events]
    assert not {"EVENT_TYPE_WORKFLOW_TASK_FAILED", "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"} & set(kinds), kinds

    # kill -9 the worker while period 0 runs; keep it down over the period end, when the Schedule fires
    worker = stack.worker
    assert worker is not None
    killed_at = datetime.now(UTC)
    worker.process.signal_group(signal.SIGKILL)
    await worker.process.wait()
    try:
        down_until = period_end.timestamp() + 3
        await asyncio.sleep(max(0.0, down_until - time.time()))
        # nothing ran without a worker: period 1 is not billed yet
        assert len(intents_of(sandbox, sub_id)) == 1
    finally:
        restarted_at = datetime.now(UTC)
        await worker.start()

    second = await wait_subscription(
        http,
        headers,
        tenant_id,
        sub_id,
        lambda s: (
            s["status"] == "active"
            and invoice_statuses(s) == [(1, "paid"), (2, "paid")]
            and (s["live"] or {}).get("cycles_paid") == 2
            and datetime.fromisoformat(s["current_period_start"]) == period_end
        ),
        timeout=45,
    )
    result = await temporal.get_workflow_handle(
        billing_cycle_workflow_id(sub_id, 1), result_type=BillingCycleResult
    ).result()
    assert (result.status, result.invoice_number, result.attempts) == ("paid", 2, 1)
    assert second["live"]["cycles_paid"] == 2 and second["live"]["period_index"] == 1
    assert datetime.fromisoformat(second["live"]["current_period_start"]) == period_end
    assert (datetime.fromisoformat(second["current_period_end"]) - period_end).total_seconds() == PERIOD_SECONDS

    # the Schedule fired while no worker ran; its BillingTrigger was picked up by the restarted worker
    schedule = await temporal.get_schedule_handle(billing_schedule_id(sub_id)).describe()
    fired = [a.started_at for a in schedule.info.recent_actions]
    assert any(killed_at <= t <= restarted_at for t in fired), (killed_at, restarted_at, fired)

    # Stripe saw exactly two charges, one per invoice, each from its own cycle: nothing charged twice
    intents = intents_of(sandbox, sub_id)
    assert [pi["status"] for pi in intents] == ["succeeded", "succeeded"]
    assert [pi["metadata"]["workflow_id"] for pi in intents] == [
        billing_cycle_workflow_id(sub_id, 0),
        billing_cycle_workflow_id(sub_id, 1),
    ]
    assert [pi["id"] for pi in intents] == [i["payment_intent_id"] for i in second["invoices"]]
    assert all(pi["amount_received"] == pi["amount"] == 100 for pi in intents)
    pi_ids = {pi["id"] for pi in intents}
    charges = [c for c in sandbox.objects("charge") if c.get("payment_intent") in pi_ids]
    assert sorted(c["status"] for c in charges) == ["succeeded", "succeeded"]
    assert [r for r in sandbox.objects("refund") if r["payment_intent"] in pi_ids] == []
    # each invoice's `invoice.paid` event, once, written by the transaction that marked it paid (the outbox)
    assert await paid_events_and_their_invoices(stack, sub_id) == [
        (billing_cycle_workflow_id(sub_id, 0), True),
        (billing_cycle_workflow_id(sub_id, 1), True),
    ]

    canceled = await cancel_now(http, headers, tenant_id, sub_id)
    assert invoice_statuses(canceled) == [(1, "paid"), (2, "paid")]
    # canceling refunds part of period 1 only; still exactly the two PaymentIntents
    refunds = [r for r in sandbox.objects("refund") if r["payment_intent"] in pi_ids]
    assert [r["payment_intent"] for r in refunds] == [intents[1]["id"]] and 0 < refunds[0]["amount"] <= 100
    assert [pi["id"] for pi in intents_of(sandbox, sub_id)] == [pi["id"] for pi in intents]


# --- 2. duplicate and out-of-order webhooks ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["duplicate", "reverse"])
async def test_duplicate_and_reordered_webhooks_change_nothing(
    http, stack: EmbeddedStack, temporal: Client, relay: WebhookRelay, mode: str
):
    sandbox = sandbox_of(stack)
    headers, tenant_id = await new_tenant(http, stack)
    # duplicate: every event delivered twice as it happens; reverse: all held, released newest first at the end,
    # so the decline's events reach the API only after the success
    sandbox.configure_webhooks(url=relay.url, mode=mode, hold=mode == "reverse")

    sub_id = await subscribe(http, headers, tenant_id, "pm_card_chargeDeclined")
    cycle_id = billing_cycle_workflow_id(sub_id, 0)
    past_due = await wait_subscription(http, headers, tenant_id, sub_id, lambda s: s["status"] == "past_due")
    assert invoice_statuses(past_due) == [(1, "open")]
    [declined] = intents_of(sandbox, sub_id)
    assert declined["status"] == "requires_payment_method"
    assert declined["last_payment_error"]["decline_code"] == "generic_decline"
    if mode == "duplicate":  # both copies of the decline reached the running cycle's endpoint, and it kept dunning
        await sandbox.wait_for_webhooks(timeout=20)
        failed = [a for a in relay.about({declined["id"]}) if a.event["type"] == "payment_intent.payment_failed"]
        assert [(a.status, a.body) for a in failed] == [
            (200, {"received": True, "routed": True}),
            (200, {"received": True, "duplicate": True}),
        ]
        assert (await cycle_state(temporal, cycle_id)).status == "dunning"

    r = await http.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/payment-method",
        json={"payment_method": "pm_card_visa"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    paid = await wait_subscription(
        http, headers, tenant_id, sub_id, lambda s: s["status"] == "active" and invoice_statuses(s) == [(1, "paid")]
    )
    result = await temporal.get_workflow_handle(cycle_id, result_type=BillingCycleResult).result()
    if mode == "reverse":
        assert sandbox.flush_webhooks() == 2  # the decline and the success: all the endpoint is subscribed to
    await sandbox.wait_for_webhooks(timeout=20)

    intents = intents_of(sandbox, sub_id)
    assert [pi["status"] for pi in intents] == ["requires_payment_method", "succeeded"]
    succeeded = intents[1]
    assert (result.status, result.attempts, result.payment_intent_id) == ("paid", 2, succeeded["id"])
    assert paid["invoices"][0]["payment_intent_id"] == succeeded["id"] and paid["payment_method"] == "pm_card_visa"

    # every delivery about these intents was answered 2xx; the second copy of each event was a reported duplicate
    ids = {pi["id"] for pi in intents}
    answers = relay.about(ids)
    recorded = [e for e in sandbox.events() if subject_of(e) in ids]  # newest first
    assert {e["type"] for e in recorded} >= {
        "payment_intent.created",
        "charge.failed",
        "payment_intent.payment_failed",
        "charge.succeeded",
        "payment_intent.succeeded",
    }
    # the endpoint is subscribed to the events the API acts on: Stripe sends it none of the others
    events = [e for e in recorded if e["type"] in STRIPE_WEBHOOK_EVENTS]
    assert [e["type"] for e in events] == ["payment_intent.succeeded", "payment_intent.payment_failed"]
    assert not [d for e in recorded if e not in events for d in sandbox.webhook_deliveries(event=e["id"])]
    deliveries = [d for e in events for d in sandbox.webhook_deliveries(event=e["id"])]
    assert deliveries and all(d["status"] is not None and 200 <= d["status"] < 300 for d in deliveries), deliveries
    assert all(200 <= a.status < 300 for a in answers), [(a.event["type"], a.status, a.body) for a in answers]
    copies = 2 if mode == "duplicate" else 1
    assert len(answers) == copies * len(events)
    for event in events:
        got = [a.body for a in answers if a.event["id"] == event["id"]]
        assert len(got) == copies and "duplicate" not in got[0], (event["type"], got)
        assert all(body == {"received": True, "duplicate": True} for body in got[1:]), (event["type"], got)
    if mode == "reverse":
        # newest first: the success reached the API before the decline that preceded it, after the cycle ended
        assert [a.event["id"] for a in answers] == [e["id"] for e in events]
        seen = [a.event["type"] for a in answers]
        assert seen.index("payment_intent.succeeded") < seen.index("payment_intent.payment_failed")
        assert all(a.body.get("routed") is False for a in answers if a.event["type"].startswith("payment_intent."))

    # Stripe resends the old decline after the success: a duplicate, nothing changes
    [old_failure] = [e for e in events if e["type"] == "payment_intent.payment_failed"]
    before = len(relay.answers)
    sandbox.resend_event(old_failure["id"])
    await sandbox.wait_for_webhooks(timeout=20)
    [resent] = relay.answers[before:]
    assert resent.event["id"] == old_failure["id"]
    assert (resent.status, resent.body) == (200, {"received": True, "duplicate": True})

    after = await wait_subscription(http, headers, tenant_id, sub_id, lambda s: True)
    assert after["status"] == "active" and after["live"]["status"] == "active" and after["live"]["cycles_paid"] == 1
    assert invoice_statuses(after) == [(1, "paid")]
    assert after["invoices"][0]["payment_intent_id"] == succeeded["id"]
    assert [pi["status"] for pi in intents_of(sandbox, sub_id)] == ["requires_payment_method", "succeeded"]
    assert [c["status"] for c in sandbox.objects("charge") if c.get("payment_intent") in ids].count("succeeded") == 1
    await cancel_now(http, headers, tenant_id, sub_id)


# --- 3. forged and stale signatures ---------------------------------------------------------------------------


async def test_forged_or_stale_webhooks_are_refused_and_change_nothing(
    http, stack: EmbeddedStack, temporal: Client, redis: Redis
):
    sandbox = sandbox_of(stack)
    secret = stack.stripe_webhook_secret
    assert secret
    headers, tenant_id = await new_tenant(http, stack)
    sub_id = await subscribe(http, headers, tenant_id, "pm_card_chargeDeclined")
    cycle_id = billing_cycle_workflow_id(sub_id, 0)
    await wait_subscription(http, headers, tenant_id, sub_id, lambda s: s["status"] == "past_due")
    await sandbox.wait_for_webhooks(timeout=20)
    [declined] = intents_of(sandbox, sub_id)
    [real_failure] = [e for e in sandbox.events("payment_intent.payment_failed") if subject_of(e) == declined["id"]]
    before = await cycle_state(temporal, cycle_id)
    assert before.status == "dunning" and before.paid_payment_intent_id is None

    # what an attacker would like to say: this cycle's intent succeeded
    forged = copy.deepcopy(real_failure)
    forged.update(id=f"evt_forged{uuid.uuid4().hex[:14]}", type="payment_intent.succeeded")
    forged["data"]["object"].update(status="succeeded", amount_received=declined["amount"], last_payment_error=None)
    payload = json.dumps(forged, indent=2)
    now = int(time.time())
    honest = json.dumps({**forged, "id": "evt_other" + uuid.uuid4().hex[:14]}, indent=2)
    attempts = {
        "wrong secret": signature_header(payload, "whsec_" + "forged" * 6, now),
        "stale (10 minutes old)": signature_header(payload, secret, now - 600),
        "signed for another body": signature_header(honest, secret, now),
        "no v1 signature": f"t={now}",
    }
    for what, header in attempts.items():
        r = await http.post(
            WEBHOOK_PATH, content=payload, headers={"Content-Type": "application/json", "Stripe-Signature": header}
        )
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), what
        assert r.json()["type"].endswith("/bad-request"), (what, r.text)
    r = await http.post(WEBHOOK_PATH, content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text

    # the event id was never claimed and the cycle heard nothing: still dunning, the invoice still open
    assert await redis.exists(dedupe_key(forged["id"])) == 0
    after = await cycle_state(temporal, cycle_id)
    assert after.model_dump() == before.model_dump()
    sub = await wait_subscription(http, headers, tenant_id, sub_id, lambda s: True)
    assert sub["status"] == "past_due" and invoice_statuses(sub) == [(1, "open")]
    assert [pi["status"] for pi in intents_of(sandbox, sub_id)] == ["requires_payment_method"]

    # control: the same route, correctly signed now, does reach this running cycle (a repeat of the decline,
    # which changes nothing) — so the 400s above were the signature's doing
    repeat = copy.deepcopy(real_failure)
    repeat["id"] = f"evt_repeat{uuid.uuid4().hex[:14]}"
    body = json.dumps(repeat, indent=2)
    r = await http.post(
        WEBHOOK_PATH,
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature_header(body, secret)},
    )
    assert r.status_code == 200 and r.json() == {"received": True, "routed": True}, r.text
    assert await redis.exists(dedupe_key(repeat["id"])) == 1
    assert (await cycle_state(temporal, cycle_id)).model_dump() == before.model_dump()

    canceled = await cancel_now(http, headers, tenant_id, sub_id)
    assert invoice_statuses(canceled) == [(1, "void")]
    assert [pi["status"] for pi in intents_of(sandbox, sub_id)] == ["requires_payment_method"]

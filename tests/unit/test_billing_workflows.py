"""Billing cycles and subscriptions under the time-skipping server, with fake billing activities."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import Worker

from models.billing_cycle_contracts import (
    BillingCycleInput,
    BillingCycleState,
    PaymentMethodUpdated,
    PaymentOutcome,
)
from models.contracts import SagaState
from tests.unit.fake_billing_activities import DECLINED, PENDING, VISA, FakeBillingWorld
from tests.unit.test_registration_workflow import email_worker
from workers.main import Workers
from workflows import activity_names as act
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.names import (
    QUERY_BILLING_CYCLE_STATE,
    QUERY_SAGA_STATE,
    SIGNAL_PAYMENT_METHOD_UPDATED,
    SIGNAL_PAYMENT_OUTCOME,
    billing_cycle_workflow_id,
    email_message_id,
    email_workflow_id,
)

DAY = timedelta(days=1)


def workers(client: Client, task_queue: str, world: FakeBillingWorld) -> Workers:
    return Workers([Worker(client, task_queue=task_queue, workflows=[BillingCycleWorkflow],
                           activities=world.activities()), email_worker(client)])


async def poll(read, predicate, timeout: float = 10.0):
    """Poll a query until `predicate` holds (queries only: the test server's clock stays put meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if predicate(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"never reached the expected state: {value}"
        await asyncio.sleep(0.05)


async def cycle_state(handle: WorkflowHandle) -> BillingCycleState:
    return await handle.query(QUERY_BILLING_CYCLE_STATE, result_type=BillingCycleState)


async def saga_state(handle: WorkflowHandle) -> SagaState:
    return await handle.query(QUERY_SAGA_STATE, result_type=SagaState)


async def email_started(client: Client, parent_id: str, purpose: str) -> datetime | None:
    """When the email child `purpose` of a workflow was started (None: never)."""
    try:
        return (await client.get_workflow_handle(email_workflow_id(email_message_id(parent_id, purpose))).describe()
                ).start_time
    except Exception:  # RPCError NOT_FOUND
        return None


EMAIL_PURPOSES = ["receipt", "unpaid", *(f"reminder-{n}" for n in range(1, 6))]


async def emails_delivered(client: Client, *workflow_ids: str) -> list[str]:
    """Wait for the email children a workflow handed out; none may be left behind with its worker gone (a
    child waiting for a worker that never comes stops the test server from skipping time in later tests)."""
    sent = []
    for wid in workflow_ids:
        for purpose in EMAIL_PURPOSES:
            if await email_started(client, wid, purpose):
                await client.get_workflow_handle(email_workflow_id(email_message_id(wid, purpose))).result()
                sent.append(purpose)
    return sent


def cycle_input(payment_method: str = VISA, **kwargs) -> BillingCycleInput:
    start = datetime(2026, 1, 31, tzinfo=timezone.utc)
    defaults = dict(subscription_id=uuid.uuid4(), tenant_id=uuid.uuid4(), plan_id="starter-monthly", amount=900,
                    currency="eur", period_index=0, period_start=start, period_end=datetime(2026, 2, 28, tzinfo=timezone.utc),
                    payment_method=payment_method, stripe_customer_id="cus_fake", notify_user_id=uuid.uuid4())
    return BillingCycleInput(**{**defaults, **kwargs})


async def start_cycle(client: Client, task_queue: str, params: BillingCycleInput, **kwargs) -> WorkflowHandle:
    return await client.start_workflow(
        BillingCycleWorkflow.run, params, id=billing_cycle_workflow_id(params.subscription_id, params.period_index),
        task_queue=task_queue, **kwargs)


# --- the billing cycle alone ---

async def test_a_paid_cycle_issues_charges_marks_paid_and_sends_a_receipt(ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input()
        handle = await start_cycle(ts_client, task_queue, params)
        result = await handle.result()
        receipt = await email_started(ts_client, handle.id, "receipt")
        assert await emails_delivered(ts_client, handle.id) == ["receipt"]
        saga = await saga_state(handle)
    assert result.status == "paid" and result.invoice_number == 1 and result.attempts == 1
    assert world.calls == [act.ISSUE_INVOICE, act.CREATE_PAYMENT_INTENT, act.MARK_INVOICE_PAID,
                           act.PUBLISH_INVOICE_EVENT]
    event = world.args[act.PUBLISH_INVOICE_EVENT][0]
    assert event.event_type == "invoice.paid" and event.invoice_number == 1 and event.amount == 900
    create = world.args[act.CREATE_PAYMENT_INTENT][0]
    assert create.idempotency_key == f"{handle.id}:pi:1" and create.invoice_id == result.invoice_id
    assert create.amount == 900 and create.payment_method == VISA and create.workflow_id == handle.id
    assert world.invoices[result.invoice_id]["status"] == "paid"
    assert world.args[act.MARK_INVOICE_PAID][0].payment_intent_id == result.payment_intent_id
    assert receipt is not None
    assert saga.status == "completed" and all(c.status == "not_needed" for c in saga.compensations)


async def test_the_outcome_comes_from_the_webhook_signal_duplicates_and_late_failures_change_nothing(
        ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        handle = await start_cycle(ts_client, task_queue, cycle_input(PENDING))
        state = await poll(lambda: cycle_state(handle), lambda s: s.status == "awaiting_payment")
        pi_id = state.payment_intent_ids[0]
        for outcome in ("succeeded", "succeeded", "failed"):  # duplicate, then out of order
            await handle.signal(SIGNAL_PAYMENT_OUTCOME, PaymentOutcome(payment_intent_id=pi_id, status=outcome))
        result = await handle.result()
        assert await emails_delivered(ts_client, handle.id) == ["receipt"]
    assert result.status == "paid" and result.payment_intent_id == pi_id
    assert world.calls.count(act.CREATE_PAYMENT_INTENT) == 1
    assert act.RETRIEVE_PAYMENT_INTENT not in world.calls  # the signal came before the first poll


async def test_without_a_webhook_the_cycle_polls_the_payment_intent(ts_client, task_queue, time_skipping_env):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        handle = await start_cycle(ts_client, task_queue, cycle_input(PENDING, poll_interval_seconds=300))
        state = await poll(lambda: cycle_state(handle), lambda s: s.status == "awaiting_payment")
        await time_skipping_env.sleep(timedelta(minutes=11))  # two polls, still pending
        assert world.calls.count(act.RETRIEVE_PAYMENT_INTENT) == 2
        world.settle(state.payment_intent_ids[0], "succeeded")
        result = await handle.result()
        assert await emails_delivered(ts_client, handle.id) == ["receipt"]
    assert result.status == "paid"
    assert world.calls.count(act.RETRIEVE_PAYMENT_INTENT) == 3
    gaps = {b - a for a, b in zip(world.times[act.RETRIEVE_PAYMENT_INTENT], world.times[act.RETRIEVE_PAYMENT_INTENT][1:])}
    assert all(timedelta(minutes=5) <= g < timedelta(minutes=5, seconds=30) for g in gaps)


async def test_a_failing_step_after_a_successful_charge_refunds_it_and_voids_the_invoice(ts_client, task_queue):
    world = FakeBillingWorld(fail_step=act.MARK_INVOICE_PAID)
    async with workers(ts_client, task_queue, world):
        handle = await start_cycle(ts_client, task_queue, cycle_input())
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        saga = await saga_state(handle)
        assert await emails_delivered(ts_client, handle.id) == []  # no receipt for a refunded charge
    assert world.calls == [act.ISSUE_INVOICE, act.CREATE_PAYMENT_INTENT, act.MARK_INVOICE_PAID,
                           act.REFUND_PAYMENT, act.VOID_INVOICE]
    [pi] = world.succeeded()
    assert pi.refunded == pi.amount == 900  # refunded in full
    assert world.args[act.REFUND_PAYMENT][0].payment_intent_ids == [pi.id]
    assert world.invoices[pi.invoice_id]["status"] == "void"
    assert saga.status == "compensated" and "Boom" in saga.error
    assert [c.status for c in saga.compensations] == ["done", "done"]


async def test_a_declined_cycle_without_a_parent_goes_through_dunning_and_ends_unpaid(
        ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input(DECLINED, dunning_schedule_days=[1, 3])
        handle = await start_cycle(ts_client, task_queue, params)
        result = await handle.result()
        reminders = [await email_started(ts_client, handle.id, f"reminder-{n}") for n in (1, 2, 3)]
        unpaid = await email_started(ts_client, handle.id, "unpaid")
        assert await emails_delivered(ts_client, handle.id) == ["unpaid", "reminder-1", "reminder-2"]
    assert result.status == "unpaid" and result.attempts == 3 and result.decline_code == "card_declined"
    keys = [c.idempotency_key for c in world.args[act.CREATE_PAYMENT_INTENT]]
    assert keys == [f"{handle.id}:pi:{n}" for n in (1, 2, 3)]
    assert {c.invoice_id for c in world.args[act.CREATE_PAYMENT_INTENT]} == {result.invoice_id}  # same invoice
    first, *retries = world.times[act.CREATE_PAYMENT_INTENT]
    assert [round((t - first) / DAY) for t in retries] == [1, 3]
    assert reminders[0] and reminders[1] and reminders[2] is None and unpaid
    assert world.invoices[result.invoice_id]["status"] == "uncollectible"
    assert [e.event_type for e in world.args[act.PUBLISH_INVOICE_EVENT]] == ["invoice.uncollectible"]
    assert act.REFUND_PAYMENT not in world.calls and act.VOID_INVOICE not in world.calls


async def test_a_new_payment_method_retries_at_once(ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        handle = await start_cycle(ts_client, task_queue, cycle_input(DECLINED))
        await poll(lambda: cycle_state(handle), lambda s: s.status == "dunning")
        await handle.signal(SIGNAL_PAYMENT_METHOD_UPDATED, PaymentMethodUpdated(payment_method=VISA))
        result = await handle.result()
        assert await emails_delivered(ts_client, handle.id) == ["receipt"]  # no reminder: no retry day came
    assert result.status == "paid" and result.attempts == 2
    first, second = world.times[act.CREATE_PAYMENT_INTENT]
    assert second - first < timedelta(minutes=1)  # not a day later
    assert [c.payment_method for c in world.args[act.CREATE_PAYMENT_INTENT]] == [DECLINED, VISA]


async def test_starting_a_cycle_twice_is_a_no_op(ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input(PENDING)
        handle = await start_cycle(ts_client, task_queue, params)
        await poll(lambda: cycle_state(handle), lambda s: s.status == "awaiting_payment")
        with pytest.raises(WorkflowAlreadyStartedError):
            await start_cycle(ts_client, task_queue, params)
        state = await cycle_state(handle)
        world.intent(state.payment_intent_ids[0]).status = "succeeded"  # Stripe settles, then the webhook
        await handle.signal(SIGNAL_PAYMENT_OUTCOME, PaymentOutcome(payment_intent_id=state.payment_intent_ids[0],
                                                                   status="succeeded"))
        result = await handle.result()
        with pytest.raises(WorkflowAlreadyStartedError):  # closed: the business id is still taken
            await start_cycle(ts_client, task_queue, params, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        # Even a second run under the same id (a reset, a backfill) reuses the invoice and the charge.
        again = await (await start_cycle(ts_client, task_queue, params)).result()
        assert await emails_delivered(ts_client, handle.id) == ["receipt"]  # the same message both times
    assert world.calls.count(act.ISSUE_INVOICE) == 2 and len(world.invoices) == 1
    assert len(world.intents) == 1 and len(world.succeeded()) == 1
    assert again.invoice_number == result.invoice_number == 1
    assert again.payment_intent_id == result.payment_intent_id

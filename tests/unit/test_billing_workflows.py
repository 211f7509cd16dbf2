"""Billing cycles and subscriptions under the time-skipping server, with fake billing activities."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from models import activity_names as act
from models.billing_calendar import add_months, prorate
from models.billing_cycle_contracts import (
    BillingCycleInput,
    BillingCycleState,
    CancelSubscription,
    ChangePlan,
    PaymentMethodUpdated,
    PaymentOutcome,
    StartCycle,
    SubscriptionInput,
    SubscriptionState,
)
from models.contracts import EmailRequest, SagaState
from models.errors import INVALID_PLAN, PLAN_UNCHANGED, SUBSCRIPTION_ENDED, SUBSCRIPTION_EXISTS
from models.names import (
    EMAIL_DELIVERY_WORKFLOW,
    QUERY_BILLING_CYCLE_STATE,
    QUERY_SAGA_STATE,
    QUERY_SUBSCRIPTION_STATE,
    SIGNAL_PAYMENT_METHOD_UPDATED,
    SIGNAL_PAYMENT_OUTCOME,
    SIGNAL_START_CYCLE,
    UPDATE_CANCEL_SUBSCRIPTION,
    UPDATE_CHANGE_PLAN,
    UPDATE_PAYMENT_METHOD,
    UPDATE_SUBSCRIPTION_ACCEPTED,
    billing_cycle_workflow_id,
    email_message_id,
    email_workflow_id,
    subscription_workflow_id,
)
from models.plans import Plan
from tests.conftest import TEST_CONVERTER
from tests.support.fake_billing_activities import DECLINED, PENDING, VISA, FakeBillingWorld
from tests.support.workflow_clock import WorkflowClock
from tests.support.workflows import email_worker
from workers.main import Workers
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.subscription import SubscriptionWorkflow

DAY = timedelta(days=1)


def workers(client: Client, task_queue: str, world: FakeBillingWorld) -> Workers:
    return Workers(
        [
            Worker(
                client,
                task_queue=task_queue,
                workflows=[BillingCycleWorkflow],
                activities=world.activities(),
                interceptors=[WorkflowClock()],
            ),
            email_worker(client),
        ]
    )


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
        return (
            await client.get_workflow_handle(email_workflow_id(email_message_id(parent_id, purpose))).describe()
        ).start_time
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def email_requests(client: Client, parent_id: str) -> list[EmailRequest]:
    """The EmailRequests a workflow handed to the delivery pipeline (the inputs their email workflows started
    with), by purpose: receipt, unpaid notice, reminders."""
    requests = []
    for purpose in EMAIL_PURPOSES:
        if await email_started(client, parent_id, purpose):
            history = await client.get_workflow_handle(
                email_workflow_id(email_message_id(parent_id, purpose))
            ).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            assert started.workflow_type.name == EMAIL_DELIVERY_WORKFLOW
            requests.append((await TEST_CONVERTER.decode(list(started.input.payloads), [EmailRequest]))[0])
    return requests


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
    start = datetime(2026, 1, 31, tzinfo=UTC)
    defaults = {
        "subscription_id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "plan_id": "starter-monthly",
        "amount": 900,
        "currency": "eur",
        "period_index": 0,
        "period_start": start,
        "period_end": datetime(2026, 2, 28, tzinfo=UTC),
        "payment_method": payment_method,
        "stripe_customer_id": "cus_fake",
        "notify_user_id": uuid.uuid4(),
    }
    return BillingCycleInput(**{**defaults, **kwargs})


async def start_cycle(client: Client, task_queue: str, params: BillingCycleInput, **kwargs) -> WorkflowHandle:
    return await client.start_workflow(
        BillingCycleWorkflow.run,
        params,
        id=billing_cycle_workflow_id(params.subscription_id, params.period_index),
        task_queue=task_queue,
        **kwargs,
    )


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
        [receipt_request] = await email_requests(ts_client, handle.id)
    assert result.status == "paid" and result.invoice_number == 1 and result.attempts == 1
    assert world.calls == [
        act.ISSUE_INVOICE,
        act.CREATE_PAYMENT_INTENT,
        act.MARK_INVOICE_PAID,  # and its `invoice.paid` event, in the same step
        act.START_EMAIL_DELIVERY,  # the receipt, only once the invoice is paid
    ]
    [(event_type, invoice_id, event)] = world.events
    assert event_type == "invoice.paid" and invoice_id == result.invoice_id
    assert event["number"] == 1 and event["amount"] == 900 and event["payment_intent_id"] == result.payment_intent_id
    create = world.args[act.CREATE_PAYMENT_INTENT][0]
    assert create.idempotency_key == f"{handle.id}:pi:1" and create.invoice_id == result.invoice_id
    assert create.amount == 900 and create.payment_method == VISA and create.workflow_id == handle.id
    assert world.invoices[result.invoice_id]["status"] == "paid"
    assert world.args[act.MARK_INVOICE_PAID][0].payment_intent_id == result.payment_intent_id
    assert receipt is not None
    # to the tenant's billing email, resolved when sent: no address in history, the user only as a fallback
    assert receipt_request.template == "billing_notice" and receipt_request.to_address is None
    assert receipt_request.tenant_id == params.tenant_id and receipt_request.to_user_id == params.notify_user_id
    assert world.invoices[result.invoice_id]["attempts"] == 1
    assert saga.status == "completed" and all(c.status == "not_needed" for c in saga.compensations)


async def test_the_outcome_comes_from_the_webhook_signal_duplicates_and_late_failures_change_nothing(
    ts_client, task_queue
):
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
    gaps = {b - a for a, b in itertools.pairwise(world.times[act.RETRIEVE_PAYMENT_INTENT])}
    assert all(timedelta(minutes=5) <= g < timedelta(minutes=5, seconds=30) for g in gaps)


async def test_an_attempt_with_no_outcome_in_time_is_cancelled_before_the_cycle_moves_on(ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input(PENDING, poll_interval_seconds=300, payment_timeout_seconds=900, dunning_schedule_days=[])
        handle = await start_cycle(ts_client, task_queue, params)
        result = await handle.result()
        await emails_delivered(ts_client, handle.id)
    assert result.status == "unpaid" and result.decline_code == "payment_timeout"
    [intent] = world.intents.values()
    assert intent.status == "canceled"  # it can no longer succeed behind the cycle's back
    [void] = world.args[act.REFUND_PAYMENT]
    assert void.payment_intent_ids == [intent.id] and void.idempotency_key == f"{handle.id}:timeout:1"


async def test_a_failing_step_after_a_successful_charge_refunds_it_and_voids_the_invoice(ts_client, task_queue):
    world = FakeBillingWorld(fail_step=act.MARK_INVOICE_PAID)
    async with workers(ts_client, task_queue, world):
        handle = await start_cycle(ts_client, task_queue, cycle_input())
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        saga = await saga_state(handle)
        assert await emails_delivered(ts_client, handle.id) == []  # no receipt for a refunded charge
    assert world.calls == [
        act.ISSUE_INVOICE,
        act.CREATE_PAYMENT_INTENT,
        act.MARK_INVOICE_PAID,
        act.REFUND_PAYMENT,
        act.VOID_INVOICE,
    ]
    [pi] = world.succeeded()
    assert pi.refunded == pi.amount == 900  # refunded in full
    assert world.args[act.REFUND_PAYMENT][0].payment_intent_ids == [pi.id]
    assert world.invoices[pi.invoice_id]["status"] == "void"
    assert saga.status == "compensated" and "Boom" in saga.error
    assert [c.status for c in saga.compensations] == ["done", "done"]


async def test_a_paid_cycle_run_again_charges_nothing(ts_client, task_queue):
    """A reset or re-run after Stripe forgot the idempotency key (24 h) finds the invoice paid: no new charge.
    (So does the cycle's first task run again after a worker crash: its local activities' answers were lost.)"""
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input()
        cycle_id = billing_cycle_workflow_id(params.subscription_id, 0)
        first = await (await start_cycle(ts_client, task_queue, params)).result()
        await emails_delivered(ts_client, cycle_id)
        receipt = ts_client.get_workflow_handle(email_workflow_id(email_message_id(cycle_id, "receipt")))
        receipt_run = (await receipt.describe()).run_id
        world.intents.clear()  # Stripe's idempotency keys expired
        second = await start_cycle(ts_client, task_queue, params, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
        again = await second.result()
        history = await second.fetch_history()
        receipt_after = await receipt.describe()
    assert again.status == "paid" and again.payment_intent_id == first.payment_intent_id
    assert again.attempts == first.attempts == 1  # the attempts it took, as the invoice records them
    # the receipt handed over again is the same message: its workflow was not started a second time
    assert world.calls.count(act.START_EMAIL_DELIVERY) == 2 and receipt_after.run_id == receipt_run
    assert not [e for e in history.events if e.HasField("start_child_workflow_execution_initiated_event_attributes")]
    assert [e[0] for e in world.events] == ["invoice.paid"]  # no second `invoice.paid`
    assert world.calls.count(act.CREATE_PAYMENT_INTENT) == 1 and world.intents == {}
    assert world.invoices[first.invoice_id]["status"] == "paid" and len(world.invoices) == 1


async def test_a_cycle_whose_first_task_ran_again_after_the_charge_still_sends_its_receipt(ts_client, task_queue):
    """A worker killed after the cycle's first task had paid the invoice (local activities: their answers are
    recorded only when the task completes): the task runs again, finds the invoice paid, charges nothing, and
    the receipt, never handed over, goes out."""
    world = FakeBillingWorld()
    params = cycle_input()
    cycle_id = billing_cycle_workflow_id(params.subscription_id, 0)
    # what the lost task left behind: the invoice issued, charged with the attempt's key and marked paid
    world.invoices["in_1"] = {"number": 1, "status": "paid", "amount": 900, "kind": "period", "period_index": 0}
    world.invoices["in_1"].update(payment_intent_id="pi_1", attempts=1)
    world.invoice_by_workflow[cycle_id] = "in_1"
    world.counters[str(params.tenant_id)] = 1
    async with workers(ts_client, task_queue, world):
        result = await (await start_cycle(ts_client, task_queue, params)).result()
        assert await emails_delivered(ts_client, cycle_id) == ["receipt"]
    assert (result.status, result.payment_intent_id, result.attempts) == ("paid", "pi_1", 1)
    assert act.CREATE_PAYMENT_INTENT not in world.calls and world.intents == {}
    assert world.events == []  # `invoice.paid` was written with the paid mark, by the lost task


async def test_a_declined_cycle_without_a_parent_goes_through_dunning_and_ends_unpaid(ts_client, task_queue):
    world = FakeBillingWorld()
    async with workers(ts_client, task_queue, world):
        params = cycle_input(DECLINED, dunning_schedule_days=[1, 3])
        handle = await start_cycle(ts_client, task_queue, params)
        result = await handle.result()
        reminders = [await email_started(ts_client, handle.id, f"reminder-{n}") for n in (1, 2, 3)]
        unpaid = await email_started(ts_client, handle.id, "unpaid")
        assert await emails_delivered(ts_client, handle.id) == ["unpaid", "reminder-1", "reminder-2"]
        state = await cycle_state(handle)
    assert result.status == "unpaid" and result.attempts == 3 and result.decline_code == "card_declined"
    assert world.calls == [
        act.ISSUE_INVOICE,
        act.CREATE_PAYMENT_INTENT,
        act.RECORD_DECLINED_ATTEMPT,
        *[act.START_EMAIL_DELIVERY, act.CREATE_PAYMENT_INTENT, act.RECORD_DECLINED_ATTEMPT] * 2,  # reminder, retry
        act.MARK_INVOICE_UNCOLLECTIBLE,  # and its `invoice.uncollectible` event, in the same step
        act.START_EMAIL_DELIVERY,  # the unpaid notice
    ]
    declines = world.args[act.RECORD_DECLINED_ATTEMPT]
    assert [(d.attempt, d.decline_code, d.invoice_id) for d in declines] == [
        (n, "card_declined", result.invoice_id) for n in (1, 2, 3)
    ]
    assert [d.payment_intent_id for d in declines] == [i.id for i in world.intents.values()]
    failed_at = state.first_failure_at  # retries count from the first failure
    assert failed_at and [d.next_retry_at - failed_at if d.next_retry_at else None for d in declines] == [
        DAY,
        3 * DAY,
        None,
    ]
    keys = [c.idempotency_key for c in world.args[act.CREATE_PAYMENT_INTENT]]
    assert keys == [f"{handle.id}:pi:{n}" for n in (1, 2, 3)]
    assert {c.invoice_id for c in world.args[act.CREATE_PAYMENT_INTENT]} == {result.invoice_id}  # same invoice
    first, *retries = world.times[act.CREATE_PAYMENT_INTENT]
    assert [round((t - first) / DAY) for t in retries] == [1, 3]
    assert reminders[0] and reminders[1] and reminders[2] is None and unpaid
    assert {r.template for r in await email_requests(ts_client, handle.id)} == {"billing_notice"}  # reminders, unpaid
    assert world.invoices[result.invoice_id]["status"] == "uncollectible"
    assert [(e[0], e[1]) for e in world.events] == [("invoice.uncollectible", result.invoice_id)]
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
    invoice = world.invoices[result.invoice_id]
    assert (invoice["status"], invoice["attempts"], invoice["next_retry_at"]) == ("paid", 2, None)
    assert invoice["decline_code"] == "card_declined" and invoice["payment_intent_id"] == result.payment_intent_id
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
        await handle.signal(
            SIGNAL_PAYMENT_OUTCOME, PaymentOutcome(payment_intent_id=state.payment_intent_ids[0], status="succeeded")
        )
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


# --- the subscription over its cycles ---

STARTER = Plan(id="starter-monthly", name="Starter", amount=900, currency="eur", interval="month", trial_days=0)
TEAM = Plan(id="team-monthly", name="Team", amount=4900, currency="eur", interval="month", trial_days=0)


def subscription_workers(client: Client, task_queue: str, world: FakeBillingWorld) -> Workers:
    return Workers(
        [
            Worker(
                client,
                task_queue=task_queue,
                workflows=[SubscriptionWorkflow, BillingCycleWorkflow],
                activities=world.activities(),
                interceptors=[WorkflowClock()],
            ),
            email_worker(client),
        ]
    )


async def start_subscription(
    client: Client, task_queue: str, plan: Plan = STARTER, payment_method: str = VISA, **kwargs
) -> WorkflowHandle:
    params = SubscriptionInput(
        subscription_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        plan=plan,
        payment_method=payment_method,
        stripe_customer_id="cus_fake",
        notify_user_id=uuid.uuid4(),
        **kwargs,
    )
    return await client.start_workflow(
        SubscriptionWorkflow.run, params, id=subscription_workflow_id(params.subscription_id), task_queue=task_queue
    )


async def sub_state(handle: WorkflowHandle) -> SubscriptionState:
    return await handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)


async def request(handle: WorkflowHandle, update: str, arg) -> SubscriptionState:
    """A request to the subscription: answered once applied, with the state it left."""
    return await handle.execute_update(update, arg, result_type=SubscriptionState)


def cycle_ids(world: FakeBillingWorld) -> list[str]:
    """The ids of every cycle that issued an invoice."""
    return sorted({c.workflow_id for c in world.args.get(act.ISSUE_INVOICE, [])})


async def cancel_now_and_finish(client: Client, handle: WorkflowHandle, world: FakeBillingWorld):
    """Tests end a subscription (it would run for ever) and wait for every email its cycles handed out."""
    await request(handle, UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
    result = await handle.result()
    await emails_delivered(client, *cycle_ids(world))
    return result


def test_calendar_months_clamp_the_day_and_do_not_drift():
    jan31 = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert [add_months(jan31, n).date().isoformat() for n in range(4)] == [
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
    ]
    assert add_months(datetime(2027, 12, 15, tzinfo=UTC), 2).date().isoformat() == "2028-02-15"
    assert prorate(900, timedelta(days=15), timedelta(days=30)) == 450
    assert prorate(1000, timedelta(days=1), timedelta(days=3)) == 333


async def test_three_monthly_cycles_after_the_trial(ts_client, task_queue, time_skipping_env):
    world = FakeBillingWorld()
    plan = STARTER.model_copy(update={"trial_days": 14})
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, plan)
        # the query shows `trialing` as soon as the status activity is scheduled: wait for it to have run too
        trial = await poll(lambda: sub_state(handle), lambda s: s.status == "trialing" and bool(world.calls))
        assert world.calls == [act.CREATE_SUBSCRIPTION, act.SET_SUBSCRIPTION_STATUS]  # nothing billed in the trial
        await time_skipping_env.sleep(timedelta(days=14 + 31 + 31 + 5))  # three period starts, not four
        state = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 3)
        result = await cancel_now_and_finish(ts_client, handle, world)
    assert len(world.succeeded()) == 3 and len(world.intents) == 3
    assert [i.amount for i in world.succeeded()] == [900, 900, 900]
    issued = world.args[act.ISSUE_INVOICE]
    assert [world.invoices[world.invoice_by_workflow[i.workflow_id]]["number"] for i in issued] == [1, 2, 3]
    assert [i.workflow_id for i in issued] == [f"billing-{state.subscription_id}-{k}" for k in range(3)]
    starts = [i.period_start for i in issued]
    assert starts[0] == trial.trial_end
    assert starts[1:] == [add_months(starts[0], 1), add_months(starts[0], 2)]
    assert [i.period_end for i in issued] == [add_months(starts[0], n) for n in (1, 2, 3)]
    assert state.status == "active" and state.paid_through == add_months(starts[0], 3)
    assert result.status == "canceled"


async def test_decline_dunning_then_a_new_payment_method_recovers(ts_client, task_queue, time_skipping_env):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, payment_method=DECLINED)
        await poll(lambda: sub_state(handle), lambda s: s.status == "past_due")
        await time_skipping_env.sleep(timedelta(days=3, hours=12))
        state = await sub_state(handle)
        assert state.status == "past_due" and state.cycles_paid == 0
        cycle_id = billing_cycle_workflow_id(state.subscription_id, 0)
        first_charge = world.times[act.CREATE_PAYMENT_INTENT][0]
        reminders = [await email_started(ts_client, cycle_id, f"reminder-{n}") for n in (1, 2, 3)]
        assert [round((t - first_charge) / DAY) for t in reminders[:2]] == [1, 3] and reminders[2] is None
        await request(handle, UPDATE_PAYMENT_METHOD, PaymentMethodUpdated(payment_method=VISA))
        state = await poll(lambda: sub_state(handle), lambda s: s.status == "active")
        await cancel_now_and_finish(ts_client, handle, world)
    assert state.cycles_paid == 1 and state.payment_method == VISA
    assert [i.status for i in world.intents.values()] == ["failed", "failed", "failed", "succeeded"]
    assert [s.status for s in world.args[act.SET_SUBSCRIPTION_STATUS]] == ["past_due", "active", "canceled"]
    # the invoice showed the decline before the subscription showed past_due
    assert world.calls.index(act.RECORD_DECLINED_ATTEMPT) < world.calls.index(act.SET_SUBSCRIPTION_STATUS)
    assert act.SUSPEND_TENANT not in world.calls


async def test_decline_through_the_whole_dunning_schedule_ends_unpaid_and_suspends_the_tenant(ts_client, task_queue):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, payment_method=DECLINED)
        result = await handle.result()
        state = await sub_state(handle)
        await emails_delivered(ts_client, billing_cycle_workflow_id(state.subscription_id, 0))
    assert result.status == "unpaid" and result.cycles_paid == 0
    assert len(world.intents) == 5 and not world.succeeded()  # the first charge and 4 retries (days 1, 3, 5, 7)
    [suspend] = world.args[act.SUSPEND_TENANT]
    assert suspend.tenant_id == state.tenant_id and suspend.subscription_id == state.subscription_id
    assert [s.status for s in world.args[act.SET_SUBSCRIPTION_STATUS]] == ["past_due", "unpaid"]
    assert round((world.times[act.SUSPEND_TENANT][0] - world.times[act.CREATE_PAYMENT_INTENT][0]) / DAY) == 7


async def test_cancel_at_period_end_lets_the_paid_period_run_out_and_bills_no_more(ts_client, task_queue):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue)
        paid = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)
        await request(handle, UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=True))
        result = await handle.result()
        state = await sub_state(handle)
        await emails_delivered(ts_client, *cycle_ids(world))
    assert result.status == "canceled" and result.refunded_amount == 0
    assert len(world.intents) == 1 and act.REFUND_PAYMENT not in world.calls
    assert state.canceled_at == paid.current_period_end == add_months(paid.current_period_start, 1)
    assert world.times[act.SET_SUBSCRIPTION_STATUS][-1] >= paid.current_period_end  # not a moment earlier


async def test_cancel_now_refunds_the_unused_part_of_the_period(ts_client, task_queue, time_skipping_env):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue)
        await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)
        await time_skipping_env.sleep(timedelta(days=10))
        result = await cancel_now_and_finish(ts_client, handle, world)
        state = await sub_state(handle)
    start, end = state.current_period_start, state.current_period_end
    expected = prorate(900, end - state.canceled_at, end - start)
    assert result.status == "canceled" and result.refunded_amount == expected
    assert abs(expected - 900 * ((end - start) - timedelta(days=10)) / (end - start)) <= 1  # ~ the last 2/3
    [refund] = world.args[act.REFUND_PAYMENT]
    assert refund.amount == expected and refund.payment_intent_ids == [world.succeeded()[0].id]
    assert world.succeeded()[0].refunded == expected
    assert len(world.intents) == 1  # no further cycle


async def test_upgrade_now_charges_the_proration_and_downgrade_waits_for_the_period_end(
    ts_client, task_queue, time_skipping_env
):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, STARTER)
        await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)
        await time_skipping_env.sleep(timedelta(days=10))
        await request(handle, UPDATE_CHANGE_PLAN, ChangePlan(plan=TEAM))
        upgraded = await poll(lambda: sub_state(handle), lambda s: s.plan.id == TEAM.id)
        start, end, at = upgraded.current_period_start, upgraded.current_period_end, upgraded.plan_changed_at
        expected = prorate(4900, end - at, end - start) - prorate(900, end - at, end - start)
        assert upgraded.last_proration_amount == expected
        assert abs(expected - 4000 * ((end - start) - timedelta(days=10)) / (end - start)) <= 2
        proration = world.intents[f"{billing_cycle_workflow_id(upgraded.subscription_id, 0, 'proration', 1)}:pi:1"]
        assert proration.status == "succeeded" and proration.amount == expected
        # a downgrade waits for the period end; the period keeps the plan it was upgraded to
        await request(handle, UPDATE_CHANGE_PLAN, ChangePlan(plan=STARTER))
        pending = await poll(lambda: sub_state(handle), lambda s: s.pending_plan is not None)
        assert pending.plan.id == TEAM.id and pending.pending_plan.id == STARTER.id
        await time_skipping_env.sleep(end - at)
        later = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 2)
        await cancel_now_and_finish(ts_client, handle, world)
    assert later.plan.id == STARTER.id and later.pending_plan is None
    assert later.current_period_start == end
    assert [i.amount for i in world.succeeded()] == [900, expected, 900]
    assert [(i.kind, i.amount) for i in world.args[act.ISSUE_INVOICE]] == [
        ("period", 900),
        ("proration", expected),
        ("period", 900),
    ]


async def test_schedule_driven_cycles_start_on_the_start_cycle_signal_never_before_the_period_end(
    ts_client, task_queue, time_skipping_env
):
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, cycle_driver="schedule")
        first = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)  # the first one starts itself
        await handle.signal(SIGNAL_START_CYCLE, StartCycle(requested_by="operator"))  # early: held, not billed
        await time_skipping_env.sleep(timedelta(days=20))
        assert len(world.intents) == 1
        await time_skipping_env.sleep(first.current_period_end - first.current_period_start - timedelta(days=19))
        second = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 2)
        assert world.times[act.ISSUE_INVOICE][1] >= first.current_period_end
        await time_skipping_env.sleep(timedelta(days=40))  # no trigger from the schedule: nothing billed
        assert len(world.intents) == 2
        await handle.signal(SIGNAL_START_CYCLE, StartCycle())  # the Schedule's action, late
        third = await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 3)
        await cancel_now_and_finish(ts_client, handle, world)
    assert second.current_period_start == first.current_period_end
    # its Schedule was asked for once, anchored where the periods are counted from
    [spec] = world.args[act.ENSURE_BILLING_SCHEDULE]
    assert spec.anchor == first.current_period_start and spec.subscription_id == first.subscription_id
    # and deleted once the subscription ended (canceled now), as its last step
    assert world.calls[-1] == act.DELETE_BILLING_SCHEDULE
    assert [d.subscription_id for d in world.args[act.DELETE_BILLING_SCHEDULE]] == [first.subscription_id]
    # a late trigger bills the next period on the calendar; it does not shift the anchor
    assert third.current_period_start == second.current_period_end
    assert third.current_period_start == add_months(first.current_period_start, 2)


async def test_a_failed_cycle_waits_for_a_rerun_and_a_new_card_or_a_cancel_is_honoured(ts_client, task_queue):
    """A cycle that failed (and refunded itself) leaves its period unbilled: a new payment method bills it again
    at once; a cancel, even 'at the period end', ends a period that was never paid."""
    world = FakeBillingWorld(fail_step=act.MARK_INVOICE_PAID)
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, payment_method="pm_card_visa_debit")
        await poll(lambda: sub_state(handle), lambda s: s.reruns == 1)
        await request(handle, UPDATE_PAYMENT_METHOD, PaymentMethodUpdated(payment_method=VISA))
        rerun = await poll(lambda: sub_state(handle), lambda s: s.reruns == 2)
        await request(handle, UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=True))
        result = await handle.result()
        await emails_delivered(ts_client, *cycle_ids(world))
    assert rerun.payment_method == VISA and rerun.cycles_paid == 0 and rerun.status == "incomplete"
    assert result.status == "canceled" and result.cycles_paid == 0
    # each run charged (the re-run with the new card), failed after the charge and refunded it: nothing kept
    charges = world.succeeded()
    assert [c.payment_method for c in charges] == ["pm_card_visa_debit", VISA]
    assert all(c.refunded == c.amount for c in charges)


async def test_cancel_now_after_an_upgrade_to_a_yearly_plan_refunds_only_what_is_unused(
    ts_client, task_queue, time_skipping_env
):
    """Each payment of the period comes back for the unused share of the time it paid for: the month's
    payment and the proration charge, not the yearly plan's rate over the month (which refunded too much)."""
    yearly = Plan(id="team-yearly", name="Team (yearly)", amount=49000, currency="eur", interval="year")
    world = FakeBillingWorld()
    async with subscription_workers(ts_client, task_queue, world):
        handle = await start_subscription(ts_client, task_queue, STARTER)
        await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)
        await time_skipping_env.sleep(timedelta(days=10))
        await request(handle, UPDATE_CHANGE_PLAN, ChangePlan(plan=yearly))
        upgraded = await poll(lambda: sub_state(handle), lambda s: s.plan.id == yearly.id)
        await time_skipping_env.sleep(timedelta(days=5))
        result = await cancel_now_and_finish(ts_client, handle, world)
        canceled = await sub_state(handle)
    start, end, at, now = (
        upgraded.current_period_start,
        upgraded.current_period_end,
        upgraded.plan_changed_at,
        canceled.canceled_at,
    )
    proration = upgraded.last_proration_amount
    assert proration > 0
    expected = prorate(900, end - now, end - start) + prorate(proration, end - now, end - at)
    assert result.refunded_amount == expected < 900 + proration
    assert sum(i.refunded for i in world.succeeded()) == expected


async def refused(request_call) -> str:
    """The ApplicationError type a request was refused with (by a validator, or by the workflow)."""
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await request_call
    assert isinstance(failed.value.cause, ApplicationError)
    return failed.value.cause.type


async def test_the_subscription_writes_its_row_first_and_validators_refuse_what_cannot_apply(local_env, task_queue):
    """On the dev server: what the API does (update-with-start on `accepted`, then requests as updates)."""
    client, world, tenant_id = local_env.client, FakeBillingWorld(), uuid.uuid4()

    async def subscribe() -> tuple[WorkflowHandle, SubscriptionState]:
        params = SubscriptionInput(
            subscription_id=uuid.uuid4(),
            tenant_id=tenant_id,
            plan=STARTER,
            payment_method=VISA,
            stripe_customer_id="cus_fake",
            notify_user_id=uuid.uuid4(),
        )
        operation = WithStartWorkflowOperation(
            SubscriptionWorkflow.run,
            params,
            id=subscription_workflow_id(params.subscription_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        state = await client.execute_update_with_start_workflow(
            UPDATE_SUBSCRIPTION_ACCEPTED, start_workflow_operation=operation, result_type=SubscriptionState
        )
        return await operation.workflow_handle(), state

    async with subscription_workers(client, task_queue, world):
        handle, accepted = await subscribe()
        assert accepted.status == "incomplete" and world.calls[0] == act.CREATE_SUBSCRIPTION
        [row] = world.args[act.CREATE_SUBSCRIPTION]
        assert row.subscription_id == accepted.subscription_id and row.workflow_id == handle.id
        # a second live subscription of the tenant: refused at once, and its workflow ends without a row
        with pytest.raises(WorkflowUpdateFailedError) as second:
            await subscribe()
        assert isinstance(second.value.cause, ApplicationError) and second.value.cause.type == SUBSCRIPTION_EXISTS
        assert len(world.args[act.CREATE_SUBSCRIPTION]) == 2

        await poll(lambda: sub_state(handle), lambda s: s.cycles_paid == 1)
        assert await refused(request(handle, UPDATE_CHANGE_PLAN, ChangePlan(plan=STARTER))) == PLAN_UNCHANGED
        dollars = TEAM.model_copy(update={"id": "team-usd", "currency": "usd"})
        assert await refused(request(handle, UPDATE_CHANGE_PLAN, ChangePlan(plan=dollars))) == INVALID_PLAN
        history = await handle.fetch_history()
        assert not [
            e
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
            and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == UPDATE_CHANGE_PLAN
        ]  # refused before reaching history

        canceled = await request(handle, UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
        assert canceled.status == "canceled" and canceled.refunded_amount > 0  # answered once applied
        try:
            again = await refused(request(handle, UPDATE_PAYMENT_METHOD, PaymentMethodUpdated(payment_method=VISA)))
            assert again == SUBSCRIPTION_ENDED
        except RPCError as err:  # the workflow had already closed
            assert err.status == RPCStatusCode.NOT_FOUND
        assert (await handle.result()).status == "canceled"
        await emails_delivered(client, *cycle_ids(world))

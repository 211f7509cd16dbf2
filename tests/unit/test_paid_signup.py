"""The paid sign-up saga (registration + tenant + first payment) under the time-skipping server, fake activities.

Each test gets its own time-skipping server (it starts in ~0.1 s): on success the registration and the
subscription outlive the sign-up, and the test server stops skipping time for good once a child closes after
its parent — that must not leak into other tests. Time runs at its real pace: no test here waits for a timer, and
awaiting a result would otherwise let the server skip to whichever timer is next the moment nothing runs (the
registration's 24 h verification deadline expired it, in a full suite, before its parent's signal or cancel came).
The `outcome` update is tested on the local dev server (the time-skipping server has no updates).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models import activity_names as act
from models.billing_calendar import add_months
from models.billing_cycle_contracts import CancelSubscription, SubscriptionState
from models.contracts import OperatorDecision, RegistrationResult, SagaState, VerifyEmail
from models.names import (
    EMAIL_DELIVERY_WORKFLOW,
    EMAIL_TASK_QUEUE,
    QUERY_SAGA_STATE,
    QUERY_SIGNUP_OUTCOME,
    QUERY_SUBSCRIPTION_STATE,
    SA_TENANT_ID,
    SIGNAL_OPERATOR_DECISION,
    SIGNAL_VERIFY_EMAIL,
    UPDATE_CANCEL_SUBSCRIPTION,
    UPDATE_SIGNUP_OUTCOME,
    billing_cycle_workflow_id,
    email_message_id,
    email_workflow_id,
    registration_workflow_id,
    signup_workflow_id,
    subscription_workflow_id,
    tenant_workflow_id,
)
from models.plans import Plan
from models.signup_contracts import PaidSignupInput, SignupOutcome
from tests.conftest import BIN_DIR, TEST_CONVERTER, custom_search_attributes
from tests.support.fake_billing_activities import DECLINED, INSUFFICIENT, PENDING, VISA
from tests.support.fake_email import FakeEmailDelivery
from tests.support.fake_signup_activities import FakeSignupWorld
from tests.support.workflows import started_at, started_workflows, wait_for
from workers.main import Workers
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.paid_signup import PaidSignupWorkflow
from workflows.registration import RegistrationWorkflow
from workflows.subscription import SubscriptionWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow

STARTER = Plan(id="starter-monthly", name="Starter", amount=900, currency="eur", interval="month")
TRIAL = Plan(id="team-monthly", name="Team", amount=4900, currency="eur", interval="month", trial_days=14)
ALL = [PaidSignupWorkflow, RegistrationWorkflow, TenantProvisioningWorkflow, BillingCycleWorkflow, SubscriptionWorkflow]
UNWIND_AFTER_TENANT = [
    act.DELETE_STRIPE_CUSTOMER,
    act.DISCARD_TENANT,
    act.REVOKE_VERIFICATION_TOKEN,
    act.DELETE_PENDING_USER,
]


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=TEST_CONVERTER, test_server_existing_path=str(BIN_DIR / "temporal-test-server")
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in custom_search_attributes()},
        )
    )
    with env.auto_time_skipping_disabled():
        yield env
    await env.shutdown()


def workers(client: Client, task_queue: str, world: FakeSignupWorld) -> Workers:
    return Workers(
        [
            Worker(client, task_queue=task_queue, workflows=ALL, activities=world.activities()),
            Worker(client, task_queue=EMAIL_TASK_QUEUE, workflows=[FakeEmailDelivery]),
        ]
    )


def signup_input(plan: Plan = STARTER, payment_method: str = VISA) -> PaidSignupInput:
    return PaidSignupInput(
        user_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        email="ada@example.com",
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake",
        display_name="Ada",
        tenant_name="Acme Labs",
        slug="acme-labs",
        plan=plan,
        payment_method=payment_method,
    )


async def start(client: Client, task_queue: str, params: PaidSignupInput) -> WorkflowHandle:
    return await client.start_workflow(
        PaidSignupWorkflow.run,
        params,
        id=signup_workflow_id(params.user_id),
        task_queue=task_queue,
        result_type=SignupOutcome,
    )


async def exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def saga_state(handle: WorkflowHandle) -> SagaState:
    return await handle.query(QUERY_SAGA_STATE, result_type=SagaState)


async def failure_of(handle: WorkflowHandle) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert isinstance(failed.value.cause, ApplicationError)
    return failed.value.cause


async def test_a_paid_signup_creates_the_user_the_tenant_and_an_active_subscription(env, task_queue):
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input()
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        outcome = await handle.result()
        saga = await saga_state(handle)
        subscription = client.get_workflow_handle(subscription_workflow_id(params.subscription_id))
        sub: SubscriptionState = await subscription.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)
        registration = client.get_workflow_handle(
            registration_workflow_id(params.user_id), result_type=RegistrationResult
        )
        assert (await registration.describe()).status.name == "RUNNING"  # still waiting for the email verification
        left = (world.pending_user_exists, world.token_live, world.tenant_exists, world.stripe_customer_exists)
        calls = list(world.calls)
        # the user verifies later; the subscription is ended so nothing outlives the test
        await registration.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=world.users.token_ids[0]))
        assert (await registration.result()).status == "verified"
        await subscription.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
        await subscription.result()

    assert outcome.status == "active" and outcome.subscription_status == "active"
    assert (outcome.user_id, outcome.tenant_id, outcome.subscription_id) == (
        params.user_id,
        params.tenant_id,
        params.subscription_id,
    )
    assert outcome.workflow_id == handle.id and outcome.decline_code is None
    assert left == (True, True, True, True)
    # the order across the three children: user first (the membership references it), then the tenant, then money
    assert calls.index(act.CREATE_PENDING_USER) < calls.index(act.ADD_MEMBERSHIP)
    assert calls.index(act.ACTIVATE_TENANT) < calls.index(act.ISSUE_INVOICE)
    assert act.DISCARD_TENANT not in calls and act.REFUND_PAYMENT not in calls
    membership = world.tenants.args[act.ADD_MEMBERSHIP][0]
    assert membership.user_id == params.user_id and membership.role == "owner"
    # the first payment: period 0, no dunning, the Stripe customer the tenant saga created
    [invoice] = world.billing.args[act.ISSUE_INVOICE]
    assert invoice.workflow_id == billing_cycle_workflow_id(params.subscription_id, 0)
    assert invoice.period_index == 0 and invoice.amount == 900 and invoice.stripe_customer_id == "cus_fake123"
    assert invoice.period_end == add_months(invoice.period_start, 1)
    [paid] = world.billing.succeeded()
    # the read model says active at once; the subscription's own Schedule is set up from the period-0 anchor
    [status] = world.billing.args[act.SET_SUBSCRIPTION_STATUS][:1]
    assert status.status == "active" and status.current_period_end == invoice.period_end
    assert status.workflow_id == subscription_workflow_id(params.subscription_id) and status.payment_method == VISA
    [schedule] = world.billing.args[act.ENSURE_BILLING_SCHEDULE]
    assert schedule.anchor == invoice.period_start and schedule.subscription_id == params.subscription_id
    # the subscription counts period 0 as paid and waits for the Schedule to bill period 1
    assert sub.status == "active" and sub.cycles_paid == 1 and sub.period_index == 0
    assert sub.current_period_start == invoice.period_start and sub.paid_through == invoice.period_end
    assert sub.anchor == invoice.period_start and sub.stripe_customer_id == "cus_fake123"
    assert [p.payment_intent_id for p in sub.period_payments] == [paid.id]
    assert saga.status == "completed" and saga.completed_steps == [
        "register_user",
        "provision_tenant",
        "first_payment",
        "record_subscription",
        "start_subscription",
        "send_verification_email",
        "send_welcome_email",
    ]
    assert saga.pivot == "first_payment"
    assert all(c.status == "not_needed" for c in saga.compensations)


async def emails_started(client: Client, params: PaidSignupInput) -> list[str]:
    """The EmailDelivery workflows the sign-up and its children handed over (workflow ids), from their histories."""
    started = []
    for wid in (
        signup_workflow_id(params.user_id),
        registration_workflow_id(params.user_id),
        tenant_workflow_id(params.tenant_id),
        billing_cycle_workflow_id(params.subscription_id, 0),
    ):
        if await exists(client, wid):
            started += [s for s in await started_workflows(client, wid) if s.startswith(email_workflow_id(""))]
    return started


@pytest.mark.parametrize("card", [DECLINED, INSUFFICIENT])
async def test_a_declined_signup_emails_no_one(env, task_queue, card):
    """The first payment is the pivot: the verification and welcome emails are held until it succeeded."""
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input(payment_method=card)
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        await failure_of(handle)
        emails = await emails_started(client, params)
        registration = await saga_state(client.get_workflow_handle(registration_workflow_id(params.user_id)))
    assert emails == []
    # the registration was unwound while it waited for the go-ahead, before handing its email to the pipeline
    assert registration.status == "compensated" and registration.step == "await_parent_pivot"
    assert "send_verification_email" not in registration.completed_steps


async def test_a_paid_signup_sends_the_verification_and_welcome_emails_after_the_payment(env, task_queue):
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input()
    verify = email_workflow_id(email_message_id(registration_workflow_id(params.user_id), "verify"))
    welcome = email_workflow_id(email_message_id(tenant_workflow_id(params.tenant_id), "welcome"))
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        outcome = await handle.result()
        registration = client.get_workflow_handle(registration_workflow_id(params.user_id))
        await wait_for(registration, lambda s: s.step == "await_verification")
        emails = await emails_started(client, params)
        welcome_email = await client.get_workflow_handle(welcome).describe()
        verify_email = await client.get_workflow_handle(verify).describe()
        history = [e async for e in handle.fetch_history_events()]
        # tidy up: the registration and the subscription would run on
        await registration.cancel()
        subscription = client.get_workflow_handle(subscription_workflow_id(params.subscription_id))
        await subscription.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
        await subscription.result()
    assert outcome.status == "active"
    receipt = email_workflow_id(email_message_id(billing_cycle_workflow_id(params.subscription_id, 0), "receipt"))
    assert sorted(emails) == sorted([verify, welcome, receipt])
    # the welcome email is the tenant's, handed over by the sign-up (the tenant saga held it), with its TenantId
    handed_over = dict((started, index) for index, started in await started_at(client, handle.id))
    assert welcome in handed_over and welcome_email.workflow_type == EMAIL_DELIVERY_WORKFLOW
    # both belong to the tenant: the verification email inherits TenantId from the sign-up's registration
    for email in (welcome_email, verify_email):
        assert email.typed_search_attributes.get(SA_TENANT_ID) == str(params.tenant_id)
    # both go out after the first payment's cycle completed (paid)
    paid = next(
        i
        for i, e in enumerate(history)
        if e.HasField("child_workflow_execution_completed_event_attributes")
        and e.child_workflow_execution_completed_event_attributes.workflow_type.name == "BillingCycle"
    )
    released = next(
        i for i, e in enumerate(history) if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
    )
    assert paid < released < handed_over[welcome]


async def test_a_plan_with_a_trial_charges_nothing_now_and_starts_the_subscription_in_trial(env, task_queue):
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input(plan=TRIAL)
    async with workers(client, task_queue, world):
        outcome = await (await start(client, task_queue, params)).result()
        subscription = client.get_workflow_handle(subscription_workflow_id(params.subscription_id))
        while (
            sub := await subscription.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)
        ).status == "incomplete":  # until it has written its row and started the trial
            await asyncio.sleep(0.05)
        # both outlive the sign-up: end them, so nothing outlives the test
        registration = client.get_workflow_handle(registration_workflow_id(params.user_id))
        await registration.cancel()
        with pytest.raises(WorkflowFailureError):
            await registration.result()
        await subscription.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
        await subscription.result()
    assert outcome.status == "active" and outcome.subscription_status == "trialing"
    assert sub.status == "trialing" and sub.trial_end is not None and sub.cycles_paid == 0
    assert act.ISSUE_INVOICE not in world.calls and act.CREATE_PAYMENT_INTENT not in world.calls


@pytest.mark.parametrize(("card", "code"), [(DECLINED, "card_declined"), (INSUFFICIENT, "insufficient_funds")])
async def test_a_declined_first_payment_unwinds_everything(env, task_queue, card, code):
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input(payment_method=card)
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        error = await failure_of(handle)
        saga = await saga_state(handle)
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome)
        registration = await client.get_workflow_handle(registration_workflow_id(params.user_id)).describe()
        subscription_started = await exists(client, subscription_workflow_id(params.subscription_id))
        cycle_history = await client.get_workflow_handle(
            billing_cycle_workflow_id(params.subscription_id, 0)
        ).fetch_history()

    assert error.type == "PaymentDeclined" and list(error.details) == [code]
    # the account is being unwound: no "invoice unpaid, subscription suspended" email to its address
    assert not [
        e for e in cycle_history.events if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    assert "ada@example.com" not in str(error) and "Acme" not in str(error)
    assert outcome.status == "declined" and outcome.decline_code == code and outcome.error_type == "PaymentDeclined"
    # one charge attempt, no dunning; then everything in reverse: customer, tenant (+ invoices), the registration
    assert world.calls.count(act.CREATE_PAYMENT_INTENT) == 1
    assert world.calls[-len(UNWIND_AFTER_TENANT) :] == UNWIND_AFTER_TENANT
    assert world.tenants.args[act.DELETE_STRIPE_CUSTOMER][0].customer_id == "cus_fake123"
    assert [d.tenant_id for d in world.discarded] == [params.tenant_id]
    assert "PaymentDeclined" in world.discarded[0].reason
    assert not (world.pending_user_exists or world.token_live or world.tenant_exists or world.stripe_customer_exists)
    assert act.REFUND_PAYMENT not in world.calls  # nothing was charged
    assert registration.status.name == "CANCELED" and not subscription_started
    assert saga.status == "compensated"
    assert [(c.step, c.status) for c in saga.compensations] == [
        ("register_user", "done"),
        ("provision_tenant", "done"),
        ("stripe_customer", "done"),
    ]


async def test_a_taken_email_rejects_the_signup_and_creates_nothing(env, task_queue):
    client = env.client
    world = FakeSignupWorld.create(
        users={"fail_step": act.CREATE_PENDING_USER, "fail_with_type": "EmailAlreadyRegistered"}
    )
    params = signup_input()
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        error = await failure_of(handle)
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome)
        saga = await saga_state(handle)
        tenant_started = await exists(client, tenant_workflow_id(params.tenant_id))
    assert error.type == "EmailAlreadyRegistered"
    assert outcome.status == "rejected" and outcome.error_type == "EmailAlreadyRegistered"
    assert world.calls == [act.CREATE_PENDING_USER]  # nothing created, nothing to undo
    assert not tenant_started and saga.status == "failed"


async def test_a_taken_slug_unwinds_the_registration(env, task_queue):
    client = env.client
    world = FakeSignupWorld.create(tenants={"fail_step": act.CREATE_TENANT, "fail_with_type": "SlugTaken"})
    params = signup_input()
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        error = await failure_of(handle)
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome)
    assert error.type == "SlugTaken" and outcome.status == "rejected" and outcome.error_type == "SlugTaken"
    assert world.calls[-3:] == [act.DISCARD_TENANT, act.REVOKE_VERIFICATION_TOKEN, act.DELETE_PENDING_USER]
    assert not (world.pending_user_exists or world.token_live or world.tenant_exists)
    assert act.ISSUE_INVOICE not in world.calls


async def test_a_failing_tenant_provisioning_unwinds_the_registration(env, task_queue):
    client = env.client
    world = FakeSignupWorld.create(tenants={"fail_step": act.CREATE_BILLING_CONFIG})
    params = signup_input()
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        error = await failure_of(handle)
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome)
        saga = await saga_state(handle)
    assert error.type == "SignupFailed" and outcome.status == "failed"
    assert "Boom" in outcome.reason and "ada@" not in outcome.reason
    # the tenant saga undid its own steps (billing config and customer deleted, membership removed, marked
    # failed); then this one discards the failed row (it references the user) and cancels the registration
    tail = world.calls[world.calls.index(act.CREATE_BILLING_CONFIG) + 1 :]
    assert tail == [
        act.DELETE_BILLING_CONFIG,
        act.DELETE_STRIPE_CUSTOMER,
        act.REMOVE_MEMBERSHIP,
        act.MARK_TENANT_FAILED,
        act.DISCARD_TENANT,
        act.REVOKE_VERIFICATION_TOKEN,
        act.DELETE_PENDING_USER,
    ]
    assert not (world.pending_user_exists or world.token_live or world.tenant_exists or world.stripe_customer_exists)
    assert act.ISSUE_INVOICE not in world.calls
    assert saga.status == "compensated" and [c.status for c in saga.compensations] == ["done", "done"]


async def test_cancelling_the_signup_while_it_waits_for_the_payment_unwinds_and_refunds(env, task_queue):
    client, world = env.client, FakeSignupWorld.create()
    params = signup_input(payment_method="pm_test_pending")
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        deadline = asyncio.get_running_loop().time() + 10
        while act.CREATE_PAYMENT_INTENT not in world.calls:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome)
    assert outcome.status == "failed" and outcome.reason == "cancelled"
    assert act.VOID_INVOICE in world.calls  # the cycle unwound itself
    assert not (world.pending_user_exists or world.token_live or world.tenant_exists or world.stripe_customer_exists)


async def test_a_registration_that_cannot_unwind_is_never_recorded_as_undone(local_env, task_queue):
    """Terminated, the registration never ran its own compensations: cancelling it undoes nothing, so the
    sign-up's unwind parks for an operator instead of recording it `done`. On the local dev server: the
    time-skipping server never tells a parent that its child was terminated."""
    client, world = local_env.client, FakeSignupWorld.create()
    params = signup_input(payment_method=PENDING)
    async with workers(client, task_queue, world):
        handle = await start(client, task_queue, params)
        deadline = asyncio.get_running_loop().time() + 10
        while act.CREATE_PAYMENT_INTENT not in world.calls:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await client.get_workflow_handle(registration_workflow_id(params.user_id)).terminate("operator")
        await handle.cancel()
        deadline = asyncio.get_running_loop().time() + 20
        while (parked := await saga_state(handle)).status != "awaiting_operator":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="skip", reason="user deleted by hand"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        saga = await saga_state(handle)

    [waiting] = [c for c in parked.compensations if c.step == "register_user"]
    assert waiting.status == "failed" and "terminated" in waiting.error.lower()
    assert [(c.step, c.status) for c in saga.compensations] == [
        ("register_user", "skipped"),
        ("provision_tenant", "done"),
        ("stripe_customer", "done"),
    ]
    assert saga.status == "compensated"
    # nothing deleted the pending user: the operator was told, and skipped it
    assert world.pending_user_exists and act.DELETE_PENDING_USER not in world.calls


# --- the `outcome` update (the API's update-with-start), on the local dev server ---


async def outcome_with_start(client: Client, task_queue: str, params: PaidSignupInput) -> SignupOutcome:
    operation = WithStartWorkflowOperation(
        PaidSignupWorkflow.run,
        params,
        id=signup_workflow_id(params.user_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return await client.execute_update_with_start_workflow(
        UPDATE_SIGNUP_OUTCOME, start_workflow_operation=operation, result_type=SignupOutcome
    )


async def test_the_outcome_update_answers_active_then_declined_after_the_unwind(local_env, task_queue):
    client, world = local_env.client, FakeSignupWorld.create()
    async with workers(client, task_queue, world):
        paid = signup_input()
        active = await outcome_with_start(client, task_queue, paid)
        declined = await outcome_with_start(client, task_queue, signup_input(payment_method=DECLINED))
        at_answer = list(world.calls)
        # tidy up: the paid sign-up's registration and subscription would run on
        registration = client.get_workflow_handle(registration_workflow_id(paid.user_id))
        await registration.cancel()
        subscription = client.get_workflow_handle(subscription_workflow_id(paid.subscription_id))
        await subscription.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
        await subscription.result()
        with pytest.raises(WorkflowFailureError):
            await registration.result()
    assert active.status == "active" and active.subscription_id == paid.subscription_id
    assert declined.status == "declined" and declined.decline_code == "card_declined"
    # the update answered once the unwind had finished, not before
    assert at_answer[-len(UNWIND_AFTER_TENANT) :] == UNWIND_AFTER_TENANT

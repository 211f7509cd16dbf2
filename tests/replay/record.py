"""Record the saga histories the replay tests replay. From the repository root, in one command:

    .venv/bin/python -m tests.replay.record

It runs every scenario in `SCENARIOS` against today's workflow code (fake activities, a fresh time-skipping
test server per scenario), writes `histories/<workflow id>.json` for each recorded workflow (the replay test
passes the file's stem back as the workflow id: child ids such as `email-…` are derived from it), and deletes
every other history in `histories/`, so the folder holds exactly one generation: today's.

When to run it (README, "Versioning policy"): until the first tagged release, after any change to a workflow
(the replay test then fails on the old histories: that is expected). From the first tagged release on, the
released histories are kept as they are (move them to `histories/<tag>/`, which the replay test also reads and
this script never touches) and a workflow change must replay them, through `workflow.patched` or a new
workflow name.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models import activity_names as act
from models.alerting import Rule, Verdict
from models.billing_cycle_contracts import (
    BillingCycleInput,
    BillingCycleState,
    CancelSubscription,
    PaymentMethodUpdated,
    StartCycle,
    SubscriptionInput,
    SubscriptionState,
)
from models.contracts import (
    AcceptInvitation,
    EmailChangeInput,
    EmailDecision,
    EmailRequest,
    InvitationInput,
    OperatorDecision,
    RegistrationInput,
    SagaState,
    TenantProvisioningInput,
    VerifyEmail,
    WebhookDecision,
    WebhookDeliveryInput,
    WebhookEvent,
    WebhookPolicy,
)
from models.incidents import (
    Acknowledge,
    CollectedSignals,
    Firing,
    IncidentInput,
    IncidentLevel,
    IncidentView,
    SignalPoint,
)
from models.names import (
    EMAIL_SEND_TASK_QUEUE,
    EMAIL_TASK_QUEUE,
    QUERY_BILLING_CYCLE_STATE,
    QUERY_SAGA_STATE,
    QUERY_SUBSCRIPTION_STATE,
    SIGNAL_ACCEPT_INVITATION,
    SIGNAL_EMAIL_DECISION,
    SIGNAL_INCIDENT_ACK,
    SIGNAL_INCIDENT_CLEAR,
    SIGNAL_INCIDENT_FIRE,
    SIGNAL_OPERATOR_DECISION,
    SIGNAL_PAYMENT_METHOD_UPDATED,
    SIGNAL_START_CYCLE,
    SIGNAL_VERIFY_EMAIL,
    SIGNAL_WEBHOOK_DECISION,
    UPDATE_CANCEL_SUBSCRIPTION,
    registration_workflow_id,
    subscription_workflow_id,
)
from models.plans import Plan
from models.signup_contracts import PaidSignupInput
from prognet.payload_codec import EncryptionCodec, converter_for
from tests.conftest import BIN_DIR, custom_search_attributes
from tests.support.fake_activities import FakeEmailChanges, FakeUsers
from tests.support.fake_billing_activities import DECLINED, VISA, FakeBillingWorld
from tests.support.fake_email import FakeEmailDelivery, FakeMailActivities
from tests.support.fake_signup_activities import FakeSignupWorld
from tests.support.fake_tenant_activities import FakeTenantWorld
from tests.support.fake_webhook_activities import FakeReceiver
from workers.main import Workers
from workflows.alert_evaluator import AlertEvaluatorWorkflow
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.email_change import EmailChangeWorkflow
from workflows.email_delivery import EmailDeliveryWorkflow
from workflows.incident import IncidentWorkflow
from workflows.invitation import InvitationWorkflow
from workflows.paid_signup import PaidSignupWorkflow
from workflows.registration import RegistrationWorkflow
from workflows.subscription import SubscriptionWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories"
PLAN = Plan(id="starter-monthly", name="Starter", amount=900, currency="eur", interval="month")
Drive = Callable[[WorkflowHandle, WorkflowEnvironment], Awaitable[None]]


@dataclass
class Scenario:
    """One saga run: `name` is its workflow id; `children` lists child workflow ids recorded with it."""

    name: str
    workflow: Any
    params: Any
    activities: Callable[[], list]
    drive: Drive | None = None
    workflows: tuple = ()  # further workflow classes its worker runs (children)
    children: tuple[str, ...] = ()
    start_signal: str | None = None  # signal-with-start (incidents)
    start_signal_args: tuple = ()
    send_activities: Callable[[], list] | None = None  # for a worker on the email send queue (EmailDelivery)

    @property
    def files(self) -> list[str]:
        return [self.name, *self.children]


async def _status(handle: WorkflowHandle, wanted: str) -> None:
    while (await handle.query(QUERY_SAGA_STATE, result_type=SagaState)).status != wanted:
        await asyncio.sleep(0.05)


# --- registration ---


def _registration(n: int) -> RegistrationInput:
    return RegistrationInput(
        user_id=uuid.UUID(int=n), email="replay@example.com", password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake"
    )


_verified = FakeUsers()
_broken = FakeUsers(broken_compensation=act.DELETE_PENDING_USER)


async def _verify(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    await _status(handle, "waiting")
    await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=_verified.token_ids[0]))


async def _cancel_then_operator_retry(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    await _status(handle, "waiting")
    await handle.cancel()
    await _status(handle, "awaiting_operator")
    _broken.healed = True
    await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="retry"))


# --- email change ---

_EMAIL_CHANGE = EmailChangeInput(change_id=uuid.UUID(int=30), user_id=uuid.UUID(int=31), new_email="new@replay.test")
_changed = FakeEmailChanges()


async def _verify_new_address(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    await _status(handle, "waiting")
    await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=_changed.token_ids[0]))


# --- tenants and invitations ---

_TENANT = TenantProvisioningInput(
    tenant_id=uuid.UUID(int=7),
    name="Replay",
    slug="replay",
    owner_user_id=uuid.UUID(int=8),
    billing_email="billing@replay.test",
)
_INVITATION = InvitationInput(
    invitation_id=uuid.UUID(int=9),
    tenant_id=uuid.UUID(int=7),
    email="x@replay.test",
    role="member",
    invited_by=uuid.UUID(int=8),
)


async def _accept(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    await _status(handle, "waiting")
    await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=uuid.UUID(int=10)))


# --- billing ---


def _cycle(n: int, payment_method: str, dunning: list[int]) -> BillingCycleInput:
    return BillingCycleInput(
        subscription_id=uuid.UUID(int=100 + n),
        tenant_id=uuid.UUID(int=7),
        plan_id=PLAN.id,
        amount=PLAN.amount,
        currency=PLAN.currency,
        period_index=0,
        period_start=datetime(2026, 1, 31, tzinfo=UTC),
        period_end=datetime(2026, 2, 28, tzinfo=UTC),
        payment_method=payment_method,
        stripe_customer_id="cus_replay",
        notify_user_id=uuid.UUID(int=8),
        dunning_schedule_days=dunning,
    )


async def _new_card(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    while (await handle.query(QUERY_BILLING_CYCLE_STATE, result_type=BillingCycleState)).status != "dunning":
        await asyncio.sleep(0.05)
    await handle.signal(SIGNAL_PAYMENT_METHOD_UPDATED, PaymentMethodUpdated(payment_method=VISA))


async def _bill_twice_then_cancel(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    while (await handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)).cycles_paid < 1:
        await asyncio.sleep(0.05)
    await handle.signal(SIGNAL_START_CYCLE, StartCycle(requested_by="replay"))  # early: held to the period end
    await env.sleep(timedelta(days=32))  # queries do not move the test server's clock; this does
    while (await handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)).cycles_paid < 2:
        await asyncio.sleep(0.05)
    await handle.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))


_SUBSCRIPTION = SubscriptionInput(
    subscription_id=uuid.UUID(int=110),
    tenant_id=uuid.UUID(int=7),
    plan=PLAN,
    payment_method=VISA,
    stripe_customer_id="cus_replay",
    notify_user_id=uuid.UUID(int=8),
    cycle_driver="schedule",
)


# --- paid sign-up (its registration child is recorded too) ---


def _signup(n: int, payment_method: str) -> PaidSignupInput:
    return PaidSignupInput(
        user_id=uuid.UUID(int=n),
        tenant_id=uuid.UUID(int=100 + n),
        subscription_id=uuid.UUID(int=200 + n),
        email="replay@example.com",
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake",
        tenant_name="Replay",
        slug="replay",
        plan=PLAN,
        payment_method=payment_method,
    )


_signup_world = FakeSignupWorld.create()


async def _then_verify_and_cancel_the_subscription(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    """After the sign-up: the user verifies (the registration completes); the subscription is ended, so
    nothing outlives the test server."""
    await handle.result()
    params = _SIGNUP_ACTIVE
    await env.client.get_workflow_handle(registration_workflow_id(params.user_id)).signal(
        SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=_signup_world.users.token_ids[0])
    )
    subscription = env.client.get_workflow_handle(subscription_workflow_id(params.subscription_id))
    await subscription.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))
    await subscription.result()


# --- webhook deliveries ---


def _webhook(n: int) -> WebhookDeliveryInput:
    tenant = uuid.UUID(int=n)
    return WebhookDeliveryInput(
        delivery_id=uuid.UUID(int=n + 1),
        endpoint_id=uuid.UUID(int=n + 2),
        tenant_id=tenant,
        event=WebhookEvent(
            id=uuid.UUID(int=n + 3),
            type="invoice.paid",
            version=1,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            tenant_id=tenant,
            aggregate_type="invoice",
            aggregate_id=str(uuid.UUID(int=n + 4)),
            payload={"number": 1},
        ),
    )


async def _dead_letter_then_retry(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    while (await handle.query(QUERY_SAGA_STATE, result_type=SagaState)).status != "awaiting_operator":
        await env.sleep(timedelta(seconds=10))
    await handle.signal(SIGNAL_WEBHOOK_DECISION, WebhookDecision(action="retry"))


_SHORT_WEBHOOK_SCHEDULE = WebhookPolicy(schedule_seconds=[0, 5])


def _email(n: int) -> EmailRequest:
    return EmailRequest(
        message_id=uuid.UUID(int=n), template="welcome", tenant_id=uuid.UUID(int=n + 1), to_address="ada@example.com"
    )


async def _email_dead_letter_then_retry(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    while (await handle.query(QUERY_SAGA_STATE, result_type=SagaState)).status != "awaiting_operator":
        await env.sleep(timedelta(seconds=10))
    await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="retry", reason="address fixed"))


_MAIL_DEFERRED = FakeMailActivities(["4xx", "ok"])
_MAIL_REFUSED = FakeMailActivities(["5xx", "ok"])

_SIGNUP_ACTIVE = _signup(21, VISA)
_SIGNUP_DECLINED = _signup(22, DECLINED)
_SIGNUP_CHILDREN = (RegistrationWorkflow, TenantProvisioningWorkflow, BillingCycleWorkflow, SubscriptionWorkflow)

SCENARIOS = [
    Scenario(
        "email_sent_after_a_deferral",
        EmailDeliveryWorkflow,
        _email(31),
        _MAIL_DEFERRED.workflow_activities,
        send_activities=_MAIL_DEFERRED.send_activities,
    ),
    Scenario(
        "email_dead_letter_retried",
        EmailDeliveryWorkflow,
        _email(33),
        _MAIL_REFUSED.workflow_activities,
        _email_dead_letter_then_retry,
        send_activities=_MAIL_REFUSED.send_activities,
    ),
    Scenario("registration_verified", RegistrationWorkflow, _registration(1), _verified.activities, _verify),
    Scenario("registration_expired", RegistrationWorkflow, _registration(2), lambda: FakeUsers().activities()),
    Scenario(
        "registration_operator_retry",
        RegistrationWorkflow,
        _registration(3),
        _broken.activities,
        _cancel_then_operator_retry,
    ),
    Scenario("email_change_verified", EmailChangeWorkflow, _EMAIL_CHANGE, _changed.activities, _verify_new_address),
    Scenario("email_change_expired", EmailChangeWorkflow, _EMAIL_CHANGE, lambda: FakeEmailChanges().activities()),
    Scenario("tenant_provisioning_active", TenantProvisioningWorkflow, _TENANT, lambda: FakeTenantWorld().activities()),
    Scenario(
        "tenant_provisioning_stripe_failed",
        TenantProvisioningWorkflow,
        _TENANT,
        lambda: FakeTenantWorld(fail_step=act.CREATE_STRIPE_CUSTOMER).activities(),
    ),
    Scenario("invitation_accepted", InvitationWorkflow, _INVITATION, lambda: FakeTenantWorld().activities(), _accept),
    Scenario("invitation_expired", InvitationWorkflow, _INVITATION, lambda: FakeTenantWorld().activities()),
    Scenario(
        "billing_cycle_paid", BillingCycleWorkflow, _cycle(1, VISA, [1, 3]), lambda: FakeBillingWorld().activities()
    ),
    Scenario(
        "billing_cycle_recovered",
        BillingCycleWorkflow,
        _cycle(2, DECLINED, [1, 3]),
        lambda: FakeBillingWorld().activities(),
        _new_card,
    ),
    Scenario(
        "billing_cycle_unpaid", BillingCycleWorkflow, _cycle(3, DECLINED, [1]), lambda: FakeBillingWorld().activities()
    ),
    Scenario(
        "subscription_schedule_canceled",
        SubscriptionWorkflow,
        _SUBSCRIPTION,
        lambda: FakeBillingWorld().activities(),
        _bill_twice_then_cancel,
        workflows=(BillingCycleWorkflow,),
    ),
    Scenario(
        "paid_signup_active",
        PaidSignupWorkflow,
        _SIGNUP_ACTIVE,
        _signup_world.activities,
        _then_verify_and_cancel_the_subscription,
        workflows=_SIGNUP_CHILDREN,
        children=(registration_workflow_id(_SIGNUP_ACTIVE.user_id),),
    ),
    Scenario(
        "paid_signup_declined",
        PaidSignupWorkflow,
        _SIGNUP_DECLINED,
        lambda: FakeSignupWorld.create().activities(),
        workflows=_SIGNUP_CHILDREN,
        children=(registration_workflow_id(_SIGNUP_DECLINED.user_id),),
    ),
]
SCENARIOS += [
    Scenario(
        "webhook_delivery_retried",
        WebhookDeliveryWorkflow,
        _webhook(30),
        lambda: FakeReceiver(codes=[500, 500]).activities(),
    ),
    Scenario(
        "webhook_delivery_dead_letter_retried",
        WebhookDeliveryWorkflow,
        _webhook(40),
        lambda: FakeReceiver(codes=[500, 503], policy=_SHORT_WEBHOOK_SCHEDULE).activities(),
        _dead_letter_then_retry,
    ),
    Scenario(
        "webhook_endpoint_disabled",
        WebhookDeliveryWorkflow,
        _webhook(50),
        lambda: FakeReceiver(codes=[500], disable_after=1).activities(),
        _dead_letter_then_retry,
    ),
]

# Histories are recorded through the production converter (pydantic + the encrypting codec) with this fixed,
# test-only key, and replayed with it: the recorded payloads are ciphertext that this key, and only this, opens.
REPLAY_KEY_ID = "replay-tests"
REPLAY_KEY = bytes.fromhex("5265706c6179207465737473206f6e6c793a206e6f7420612073656372657421")  # 32 bytes
REPLAY_CONVERTER = converter_for(EncryptionCodec({REPLAY_KEY_ID: REPLAY_KEY}, REPLAY_KEY_ID))


# --- alerting: one evaluator run that fires a rule; an incident escalated, acknowledged, auto-resolved ---


class _FakeAlerting:
    def __init__(self) -> None:
        self.applied: list = []

    def activities(self) -> list:
        @activity.defn(name=act.COLLECT_ALERT_SIGNALS)
        async def collect() -> CollectedSignals:
            rule = Rule(
                name="email-dead-letter", severity="warning", signal="email.dead_letters", threshold={"above": 0}
            )
            points = [SignalPoint(minute=100, value=2)]
            return CollectedSignals(minute=100, rules=[rule], series={"email.dead_letters": points})

        @activity.defn(name=act.APPLY_ALERT_VERDICTS)
        async def apply(verdicts: list[Verdict]) -> None:
            self.applied.append(verdicts)

        @activity.defn(name=act.POST_INCIDENT_WEBHOOK)
        async def post(url: str, incident: IncidentView) -> None:
            pass

        return [collect, apply, post]


_INCIDENT = IncidentInput(
    rule="email-dead-letter",
    severity="warning",
    summary="An email is in the dead letter",
    levels=[
        IncidentLevel(emails=["first@example.com"], webhooks=["https://chat.example/hook"], timeout_seconds=60),
        IncidentLevel(emails=["second@example.com"], timeout_seconds=120),
    ],
    repeat_every_seconds=600,
    clear_after_seconds=600,
    reopen_window_seconds=1800,
)


async def _escalate_ack_then_clear(handle: WorkflowHandle, env: WorkflowEnvironment) -> None:
    await env.sleep(timedelta(seconds=90))
    await handle.signal(SIGNAL_INCIDENT_FIRE, Firing(value=3, detail="3 above 0"))
    await handle.signal(SIGNAL_INCIDENT_ACK, Acknowledge(by="user:replay"))
    await handle.signal(SIGNAL_INCIDENT_CLEAR)


SCENARIOS += [
    Scenario("alert_evaluator_run", AlertEvaluatorWorkflow, None, lambda: _FakeAlerting().activities()),
    Scenario(
        "incident-email-dead-letter-global",
        IncidentWorkflow,
        _INCIDENT,
        lambda: _FakeAlerting().activities(),
        _escalate_ack_then_clear,
        start_signal=SIGNAL_INCIDENT_FIRE,
        start_signal_args=(Firing(value=1, detail="1 above 0"),),
    ),
]
RECORDED = {file for scenario in SCENARIOS for file in scenario.files}  # the stems the replay test expects


async def _time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=REPLAY_CONVERTER, test_server_existing_path=str(BIN_DIR / "temporal-test-server")
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in custom_search_attributes()},
        )
    )
    return env


async def record(scenario: Scenario) -> dict[str, str]:
    """Run one scenario on its own test server (an abandoned child closing after its parent would stop the
    server's time skipping for the next one); returns workflow id → history JSON."""
    env = await _time_skipping()
    try:
        tq = f"record-{uuid.uuid4()}"
        async with Workers(
            [
                Worker(
                    env.client,
                    task_queue=tq,
                    workflows=[scenario.workflow, *scenario.workflows],
                    activities=scenario.activities(),
                ),
                Worker(env.client, task_queue=EMAIL_TASK_QUEUE, workflows=[FakeEmailDelivery]),
                *(
                    [Worker(env.client, task_queue=EMAIL_SEND_TASK_QUEUE, activities=scenario.send_activities())]
                    if scenario.send_activities
                    else []
                ),
            ]
        ):
            handle = await env.client.start_workflow(
                scenario.workflow.run,
                scenario.params,
                id=scenario.name,
                task_queue=tq,
                start_signal=scenario.start_signal,
                start_signal_args=scenario.start_signal_args,
            )
            if scenario.drive:
                await scenario.drive(handle, env)
            # The handle `start_workflow` returned: only its `result()` lets the test server skip time.
            for waited in [handle, *(env.client.get_workflow_handle(child) for child in scenario.children)]:
                try:
                    await waited.result()
                except Exception:
                    pass
            return {
                workflow_id: (await env.client.get_workflow_handle(workflow_id).fetch_history()).to_json()
                for workflow_id in scenario.files
            }
    finally:
        await env.shutdown()


async def main() -> None:
    HISTORIES.mkdir(exist_ok=True)
    recorded: dict[str, str] = {}
    for scenario in SCENARIOS:
        recorded |= await record(scenario)
    assert set(recorded) == RECORDED
    for stale in HISTORIES.glob("*.json"):  # histories of older code; released ones live in subfolders
        if stale.stem not in recorded:
            stale.unlink()
            print("deleted", stale.name)
    for workflow_id, history in recorded.items():
        (HISTORIES / f"{workflow_id}.json").write_text(history)
        print("recorded", f"{workflow_id}.json")


if __name__ == "__main__":
    asyncio.run(main())

"""Record saga histories for the replay tests: `.venv/bin/python -m tests.replay.record`.

Each run writes histories of the current code under the current GENERATION; files that exist are kept (older
code recorded them, and replaying them against today's code is the point of the test). Bump GENERATION when
a workflow change is guarded by `workflow.patched`, so both the old and the new paths stay covered.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

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
    InvitationInput,
    OperatorDecision,
    RegistrationInput,
    SagaState,
    TenantProvisioningInput,
    VerifyEmail,
)
from models.plans import Plan
from tests.conftest import BIN_DIR, custom_search_attributes
from tests.unit.fake_billing_activities import FakeBillingWorld
from tests.unit.fake_activities import FakeUsers
from tests.unit.fake_email import FakeEmailDelivery
from tests.unit.fake_tenant_activities import FakeTenantWorld
from workers.main import Workers
from workflows import activity_names as act
from workflows.billing_cycle import BillingCycleWorkflow
from workflows.invitation import InvitationWorkflow
from workflows.names import (
    EMAIL_TASK_QUEUE,
    QUERY_BILLING_CYCLE_STATE,
    QUERY_SAGA_STATE,
    QUERY_SUBSCRIPTION_STATE,
    SIGNAL_PAYMENT_METHOD_UPDATED,
    SIGNAL_START_CYCLE,
    SIGNAL_ACCEPT_INVITATION,
    SIGNAL_OPERATOR_DECISION,
    SIGNAL_VERIFY_EMAIL,
    UPDATE_CANCEL_SUBSCRIPTION,
)
from workflows.registration import RegistrationWorkflow
from workflows.subscription import SubscriptionWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow

HERE = Path(__file__).parent / "histories"
GENERATION = "billing"  # "" for the first recordings, "email_pipeline" after the email pipeline


def _stem(name: str) -> str:
    # the file's stem is also the recorded workflow id: the replay test passes it back as the id, and
    # child workflow ids (email-…) are derived from it
    return f"{name}@{GENERATION}" if GENERATION else name


def _keep(name: str, history_json: str) -> None:
    path = HERE / f"{_stem(name)}.json"
    if path.exists() and "--overwrite" not in sys.argv:
        print("kept", path.name)
        return
    path.write_text(history_json)
    print("recorded", path.name)


async def _status(handle, wanted: str) -> None:
    while (await handle.query(QUERY_SAGA_STATE, result_type=SagaState)).status != wanted:
        await asyncio.sleep(0.05)


async def run(env: WorkflowEnvironment, name: str, workflow, params, activities: list, drive=None,
              children: tuple = ()) -> None:
    tq = f"record-{uuid.uuid4()}"
    async with Workers([Worker(env.client, task_queue=tq, workflows=[workflow, *children], activities=activities),
                        Worker(env.client, task_queue=EMAIL_TASK_QUEUE, workflows=[FakeEmailDelivery])]):
        handle = await env.client.start_workflow(workflow.run, params, id=_stem(name), task_queue=tq)
        if drive:
            await drive(handle)
        try:
            await handle.result()
        except Exception:
            pass  # failed and cancelled sagas are recorded too
        history = await handle.fetch_history()
    _keep(name, history.to_json())


async def time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(BIN_DIR / "temporal-test-server"))
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace="default",
        search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in custom_search_attributes()}))
    return env


async def record_billing() -> None:
    """Billing cycles (paid; declined then recovered; unpaid) and a schedule-driven subscription, each on a
    fresh test server (an abandoned email child closing after its parent stops the server's time skipping)."""
    def cycle(n: int, payment_method: str, dunning: list[int]) -> BillingCycleInput:
        return BillingCycleInput(
            subscription_id=uuid.UUID(int=100 + n), tenant_id=uuid.UUID(int=7), plan_id="starter-monthly",
            amount=900, currency="eur", period_index=0, period_start=datetime(2026, 1, 31, tzinfo=timezone.utc),
            period_end=datetime(2026, 2, 28, tzinfo=timezone.utc), payment_method=payment_method,
            stripe_customer_id="cus_replay", notify_user_id=uuid.UUID(int=8), dunning_schedule_days=dunning)

    async def new_card(handle, env):
        while (await handle.query(QUERY_BILLING_CYCLE_STATE, result_type=BillingCycleState)).status != "dunning":
            await asyncio.sleep(0.05)
        await handle.signal(SIGNAL_PAYMENT_METHOD_UPDATED, PaymentMethodUpdated(payment_method="pm_card_visa"))

    async def bill_twice_then_cancel(handle, env):
        while (await handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)).cycles_paid < 1:
            await asyncio.sleep(0.05)
        await handle.signal(SIGNAL_START_CYCLE, StartCycle(requested_by="replay"))  # early: held to the period end
        await env.sleep(timedelta(days=32))  # queries do not move the test server's clock; this does
        while (await handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState)).cycles_paid < 2:
            await asyncio.sleep(0.05)
        await handle.execute_update(UPDATE_CANCEL_SUBSCRIPTION, CancelSubscription(at_period_end=False))

    plan = Plan(id="starter-monthly", name="Starter", amount=900, currency="eur", interval="month")
    subscription = SubscriptionInput(subscription_id=uuid.UUID(int=110), tenant_id=uuid.UUID(int=7), plan=plan,
                                     payment_method="pm_card_visa", stripe_customer_id="cus_replay",
                                     notify_user_id=uuid.UUID(int=8), cycle_driver="schedule")
    scenarios = [
        ("billing_cycle_paid", BillingCycleWorkflow, cycle(1, "pm_card_visa", [1, 3]), None),
        ("billing_cycle_recovered", BillingCycleWorkflow, cycle(2, "pm_card_chargeDeclined", [1, 3]), new_card),
        ("billing_cycle_unpaid", BillingCycleWorkflow, cycle(3, "pm_card_chargeDeclined", [1]), None),
        ("subscription_schedule_canceled", SubscriptionWorkflow, subscription, bill_twice_then_cancel),
    ]
    for name, workflow, params, drive in scenarios:
        env = await time_skipping()
        await run(env, name, workflow, params, FakeBillingWorld().activities(),
                  drive and (lambda handle, drive=drive, env=env: drive(handle, env)),
                  children=(BillingCycleWorkflow,) if workflow is SubscriptionWorkflow else ())
        await env.shutdown()


async def main() -> None:
    env = await time_skipping()

    def registration(n: int) -> RegistrationInput:
        return RegistrationInput(user_id=uuid.UUID(int=n), email="replay@example.com",
                                 password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake")

    verified = FakeUsers()

    async def verify(handle):
        await _status(handle, "waiting")
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=verified.token_ids[0]))

    broken = FakeUsers(broken_compensation=act.DELETE_PENDING_USER)

    async def cancel_then_operator_retry(handle):
        await _status(handle, "waiting")
        await handle.cancel()
        await _status(handle, "awaiting_operator")
        broken.healed = True
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="retry"))

    await run(env, "registration_verified", RegistrationWorkflow, registration(1), verified.activities(), verify)
    await run(env, "registration_expired", RegistrationWorkflow, registration(2), FakeUsers().activities())
    await run(env, "registration_operator_retry", RegistrationWorkflow, registration(3), broken.activities(),
              cancel_then_operator_retry)

    tenant = TenantProvisioningInput(tenant_id=uuid.UUID(int=7), name="Replay", slug="replay",
                                     owner_user_id=uuid.UUID(int=8), billing_email="billing@replay.test")
    invitation = InvitationInput(invitation_id=uuid.UUID(int=9), tenant_id=uuid.UUID(int=7), email="x@replay.test",
                                 role="member", invited_by=uuid.UUID(int=8))

    async def accept(handle):
        await _status(handle, "waiting")
        await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=uuid.UUID(int=10)))

    await run(env, "tenant_provisioning_active", TenantProvisioningWorkflow, tenant, FakeTenantWorld().activities())
    await run(env, "tenant_provisioning_stripe_failed", TenantProvisioningWorkflow, tenant,
              FakeTenantWorld(fail_step=act.CREATE_STRIPE_CUSTOMER).activities())
    await run(env, "invitation_accepted", InvitationWorkflow, invitation, FakeTenantWorld().activities(), accept)
    await run(env, "invitation_expired", InvitationWorkflow, invitation, FakeTenantWorld().activities())
    await env.shutdown()
    await record_billing()


if __name__ == "__main__":
    asyncio.run(main())

"""Tenant provisioning and invitation sagas under the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from models import activity_names as act
from models.contracts import (
    AcceptInvitation,
    CreateBillingConfig,
    InvitationInput,
    OperatorDecision,
    TenantProvisioningInput,
)
from models.names import (
    SIGNAL_ACCEPT_INVITATION,
    SIGNAL_OPERATOR_DECISION,
    SIGNAL_REVOKE_INVITATION,
    email_workflow_id,
)
from tests.support.fake_tenant_activities import FakeTenantWorld
from tests.support.workflows import email_worker, saga_state, wait_for, wait_for_event
from workers.main import Workers
from workflows.invitation import InvitationWorkflow
from workflows.tenant_provisioning import TenantProvisioningWorkflow, welcome_email

# (the welcome email is handed to the delivery pipeline by a local activity after activation, the pivot)
FORWARD = [
    act.CREATE_TENANT,
    act.ADD_MEMBERSHIP,
    act.CREATE_STRIPE_CUSTOMER,
    act.CREATE_BILLING_CONFIG,
    act.APPLY_DEFAULT_SETTINGS,
    act.ACTIVATE_TENANT,
]
# the compensation of each forward step that has one, in forward order
UNDO = {
    act.CREATE_TENANT: act.MARK_TENANT_FAILED,
    act.ADD_MEMBERSHIP: act.REMOVE_MEMBERSHIP,
    act.CREATE_STRIPE_CUSTOMER: act.DELETE_STRIPE_CUSTOMER,
    act.CREATE_BILLING_CONFIG: act.DELETE_BILLING_CONFIG,
    act.APPLY_DEFAULT_SETTINGS: act.REMOVE_DEFAULT_SETTINGS,
}


def worker(client: Client, task_queue: str, world: FakeTenantWorld) -> Workers:
    return Workers(
        [
            Worker(
                client,
                task_queue=task_queue,
                workflows=[TenantProvisioningWorkflow, InvitationWorkflow],
                activities=world.activities(),
            ),
            email_worker(client),
        ]
    )


def tenant_input() -> TenantProvisioningInput:
    return TenantProvisioningInput(
        tenant_id=uuid.uuid4(), name="Acme", slug="acme", owner_user_id=uuid.uuid4(), billing_email="billing@acme.test"
    )


async def test_provisioning_runs_every_step_in_order(own_ts_client, task_queue):
    ts_client = own_ts_client
    world = FakeTenantWorld()
    async with worker(ts_client, task_queue, world):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        result = await handle.result()
        state = await saga_state(handle)
    assert result.status == "active" and result.stripe_customer_id == "cus_fake123"
    assert world.calls == FORWARD
    create = world.args[act.CREATE_STRIPE_CUSTOMER][0]
    assert create.idempotency_key == f"tenant-{params.tenant_id}:create_stripe_customer"
    assert create.tenant_id == params.tenant_id
    assert world.args[act.ADD_MEMBERSHIP][0].role == "owner"
    assert state.status == "completed" and state.pivot == "activate_tenant"
    assert state.completed_steps[-2:] == ["activate_tenant", "send_welcome_email"]
    assert all(c.status == "not_needed" for c in state.compensations)


async def welcome_started(client: Client, params: TenantProvisioningInput) -> bool:
    try:
        await client.get_workflow_handle(
            email_workflow_id(welcome_email(params.tenant_id, params.owner_user_id).message_id)
        ).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@pytest.mark.parametrize("send_welcome_email", [True, False])
async def test_the_welcome_email_goes_only_once_the_tenant_is_active_and_only_if_asked(
    own_ts_client, task_queue, send_welcome_email
):
    ts_client = own_ts_client
    async with worker(ts_client, task_queue, FakeTenantWorld()):
        params = tenant_input().model_copy(update={"send_welcome_email": send_welcome_email})
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        await handle.result()
        sent = await welcome_started(ts_client, params)
    assert sent == send_welcome_email


async def test_a_tenant_that_fails_to_activate_sends_no_welcome_email(ts_client, task_queue):
    async with worker(ts_client, task_queue, FakeTenantWorld(fail_step=act.ACTIVATE_TENANT)):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        sent = await welcome_started(ts_client, params)
    assert not sent


@pytest.mark.parametrize("failing", FORWARD)
async def test_failure_at_each_step_compensates_exactly_the_started_steps_in_reverse(ts_client, task_queue, failing):
    world = FakeTenantWorld(fail_step=failing)
    async with worker(ts_client, task_queue, world):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await saga_state(handle)
    started = FORWARD[: FORWARD.index(failing) + 1]
    expected_unwind = [UNDO[s] for s in reversed(started) if s in UNDO]
    assert world.calls == started + expected_unwind
    assert state.status == "compensated"
    failed = world.args.get(act.MARK_TENANT_FAILED)
    assert failed and "Boom" in failed[0].reason  # the tenant is marked failed with the reason
    if act.DELETE_STRIPE_CUSTOMER in expected_unwind:
        delete = world.args[act.DELETE_STRIPE_CUSTOMER][0]
        # the customer id when the create answered; else the idempotency key finds it again
        expected_id = None if failing == act.CREATE_STRIPE_CUSTOMER else "cus_fake123"
        assert delete.customer_id == expected_id
        assert delete.idempotency_key == f"tenant-{params.tenant_id}:create_stripe_customer"


async def test_taken_slug_fails_fast_without_compensation(ts_client, task_queue):
    world = FakeTenantWorld(fail_step=act.CREATE_TENANT, fail_with_type="SlugTaken")
    async with worker(ts_client, task_queue, world):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert isinstance(failure.value.cause, ApplicationError) and failure.value.cause.type == "SlugTaken"
    assert world.calls == [act.CREATE_TENANT]


async def test_cancellation_mid_provisioning_waits_for_the_running_step_then_compensates(ts_client, task_queue):
    world = FakeTenantWorld()
    finish = asyncio.Event()
    fakes = {getattr(a, "__temporal_activity_definition").name: a for a in world.activities()}
    CREATED = "billing config committed"  # what the held step appends when it finally ends

    # The billing-config step runs until the workflow has asked to cancel it, then finishes anyway (as a step
    # that does not heartbeat does). Its undo must come after that end, never beside it. (On the time-skipping
    # server an activity must not complete in the same moment as its cancel request: hence the wait for it.)
    @activity.defn(name=act.CREATE_BILLING_CONFIG)
    async def slow_billing_config(req: CreateBillingConfig) -> None:
        world.calls.append(act.CREATE_BILLING_CONFIG)
        while not finish.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.05)
        world.calls.append(CREATED)

    fakes[act.CREATE_BILLING_CONFIG] = slow_billing_config
    async with Workers(
        [
            Worker(
                ts_client, task_queue=task_queue, workflows=[TenantProvisioningWorkflow], activities=[*fakes.values()]
            ),
            email_worker(ts_client),
        ]
    ):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        await wait_for(handle, lambda s: s.step == "create_billing_config")
        await handle.cancel()
        await wait_for_event(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        await asyncio.sleep(0.5)  # the workflow has had its chance to start compensating early
        assert act.DELETE_BILLING_CONFIG not in world.calls
        finish.set()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        state = await saga_state(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert world.calls[-5:] == [
        CREATED,
        act.DELETE_BILLING_CONFIG,
        act.DELETE_STRIPE_CUSTOMER,
        act.REMOVE_MEMBERSHIP,
        act.MARK_TENANT_FAILED,
    ]
    assert state.status == "compensated" and world.args[act.MARK_TENANT_FAILED][0].reason == "cancelled"
    assert "create_billing_config" in state.completed_steps  # it ended, and was undone as a finished step


async def test_failing_compensation_parks_provisioning_for_an_operator(ts_client, task_queue):
    world = FakeTenantWorld(fail_step=act.ACTIVATE_TENANT, broken_compensation=act.DELETE_STRIPE_CUSTOMER)
    async with worker(ts_client, task_queue, world):
        params = tenant_input()
        handle = await ts_client.start_workflow(
            TenantProvisioningWorkflow.run, params, id=f"tenant-{params.tenant_id}", task_queue=task_queue
        )
        parked = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert [c.step for c in parked.compensations if c.status == "failed"] == ["create_stripe_customer"]
        assert act.REMOVE_MEMBERSHIP not in world.calls  # the unwind waits; nothing after it ran
        world.healed = True
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="retry"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await saga_state(handle)
    assert state.status == "compensated"
    assert world.calls[-2:] == [act.REMOVE_MEMBERSHIP, act.MARK_TENANT_FAILED]


# --- invitations ---


def invitation_input() -> InvitationInput:
    return InvitationInput(
        invitation_id=uuid.uuid4(), tenant_id=uuid.uuid4(), email="new@acme.test", role="admin", invited_by=uuid.uuid4()
    )


async def start_invitation(client: Client, task_queue: str, params: InvitationInput):
    return await client.start_workflow(
        InvitationWorkflow.run, params, id=f"invitation-{params.invitation_id}", task_queue=task_queue
    )


async def test_accepted_invitation_adds_the_membership(ts_client, task_queue):
    world = FakeTenantWorld()
    async with worker(ts_client, task_queue, world):
        params = invitation_input()
        handle = await start_invitation(ts_client, task_queue, params)
        await wait_for(handle, lambda s: s.status == "waiting")
        user_id = uuid.uuid4()
        await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=user_id))
        result = await handle.result()
    assert result.status == "accepted" and result.user_id == user_id
    assert world.calls == [act.ISSUE_INVITATION, act.COMPLETE_INVITATION]
    assert world.args[act.COMPLETE_INVITATION][0].user_id == user_id


async def test_unanswered_invitation_expires_after_7_days(ts_client, task_queue):
    world = FakeTenantWorld()
    async with worker(ts_client, task_queue, world):
        params = invitation_input()
        handle = await start_invitation(ts_client, task_queue, params)
        result = await handle.result()
        state = await saga_state(handle)
        elapsed = state.updated_at - (await handle.describe()).start_time
    assert result.status == "expired"
    assert timedelta(days=7) <= elapsed < timedelta(days=7, hours=1)
    assert world.args[act.CLOSE_INVITATION][0].status == "expired"
    assert act.COMPLETE_INVITATION not in world.calls


async def test_revoked_invitation_closes_and_ignores_a_later_accept(ts_client, task_queue):
    world = FakeTenantWorld()
    async with worker(ts_client, task_queue, world):
        params = invitation_input()
        handle = await start_invitation(ts_client, task_queue, params)
        await wait_for(handle, lambda s: s.status == "waiting")
        await handle.signal(SIGNAL_REVOKE_INVITATION)
        await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=uuid.uuid4()))
        result = await handle.result()
    assert result.status == "revoked"
    assert world.calls == [act.ISSUE_INVITATION, act.CLOSE_INVITATION]
    assert world.args[act.CLOSE_INVITATION][0].status == "revoked"


async def test_cancelled_invitation_revokes_its_token(ts_client, task_queue):
    world = FakeTenantWorld()
    async with worker(ts_client, task_queue, world):
        params = invitation_input()
        handle = await start_invitation(ts_client, task_queue, params)
        await wait_for(handle, lambda s: s.status == "waiting")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert world.calls[-1] == act.CLOSE_INVITATION
    assert world.args[act.CLOSE_INVITATION][0].status == "revoked"

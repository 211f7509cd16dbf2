"""Registration saga and the saga primitive under the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from models import activity_names as act
from models.contracts import OperatorDecision, RegistrationInput, VerifyEmail
from models.names import (
    SIGNAL_OPERATOR_DECISION,
    SIGNAL_SEND_VERIFICATION_EMAIL,
    SIGNAL_VERIFY_EMAIL,
    email_message_id,
    email_workflow_id,
)
from tests.support.fake_activities import FakeUsers
from tests.support.workflows import email_worker, saga_state, wait_for
from workers.main import Workers
from workflows.registration import RegistrationWorkflow

DAY = 24 * 3600
# The verification email is handed to the delivery pipeline (its own workflow, started by a local activity that
# is not a users activity), not sent here.
FORWARD = [act.CREATE_PENDING_USER, act.ISSUE_VERIFICATION_TOKEN]
UNWIND = [act.REVOKE_VERIFICATION_TOKEN, act.DELETE_PENDING_USER]


def registration_input() -> RegistrationInput:
    return RegistrationInput(
        user_id=uuid.uuid4(),
        email="someone@example.com",
        display_name="Someone",
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$fake$fake",
        verification_timeout_seconds=DAY,
    )


async def start(client: Client, task_queue: str, params: RegistrationInput) -> WorkflowHandle:
    return await client.start_workflow(
        RegistrationWorkflow.run, params, id=f"registration-{params.user_id}", task_queue=task_queue
    )


def worker(client: Client, task_queue: str, fake: FakeUsers) -> Workers:
    return Workers(
        [
            Worker(client, task_queue=task_queue, workflows=[RegistrationWorkflow], activities=fake.activities()),
            email_worker(client),
        ]
    )


async def test_verified_registration_runs_every_step_and_no_compensation(ts_client, task_queue):
    fake = FakeUsers()
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        state = await wait_for(handle, lambda s: s.status == "waiting")
        assert state.step == "await_verification" and "email verification" in state.waiting_for
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=fake.token_ids[0]))
        result = await handle.result()
        state = await saga_state(handle)
        email = await ts_client.get_workflow_handle(email_workflow_id(email_message_id(handle.id, "verify"))).describe()
        summary = await email.static_summary()
    assert result.status == "verified"
    assert fake.calls == [*FORWARD, act.ACTIVATE_USER]
    # handed off, not a child (a child costs the registration two workflow tasks); its summary names the sender
    assert email.workflow_type == "EmailDelivery" and email.parent_id is None and handle.id in (summary or "")
    assert state.completed_steps[:3] == ["create_pending_user", "issue_verification_token", "send_verification_email"]
    assert state.status == "completed"
    assert [c.status for c in state.compensations] == ["not_needed", "not_needed"]


async def email_started(client: Client, handle: WorkflowHandle) -> bool:
    try:
        await client.get_workflow_handle(email_workflow_id(email_message_id(handle.id, "verify"))).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def test_a_held_verification_email_waits_for_the_go_ahead(own_ts_client, task_queue):
    ts_client = own_ts_client
    """Started with `hold_verification_email` (as a paid sign-up does), nothing is emailed before the signal."""
    fake = FakeUsers()
    async with worker(ts_client, task_queue, fake):
        handle = await start(
            ts_client, task_queue, registration_input().model_copy(update={"hold_verification_email": True})
        )
        held = await wait_for(handle, lambda s: s.step == "await_parent_pivot")
        sent_early = await email_started(ts_client, handle)
        await handle.signal(SIGNAL_SEND_VERIFICATION_EMAIL)
        await wait_for(handle, lambda s: s.step == "await_verification")
        sent = await email_started(ts_client, handle)
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=fake.token_ids[0]))
        result = await handle.result()
    assert held.status == "waiting" and SIGNAL_SEND_VERIFICATION_EMAIL in held.waiting_for
    assert not sent_early and sent and result.status == "verified"


async def test_a_held_verification_email_never_released_expires_without_emailing(own_ts_client, task_queue):
    ts_client = own_ts_client
    fake = FakeUsers()
    async with worker(ts_client, task_queue, fake):
        handle = await start(
            ts_client, task_queue, registration_input().model_copy(update={"hold_verification_email": True})
        )
        result = await handle.result()  # the time-skipping server jumps the 24 h
        sent = await email_started(ts_client, handle)
        state = await saga_state(handle)
    assert result.status == "expired" and not sent
    assert fake.calls == [*FORWARD, *UNWIND] and state.status == "expired"


async def test_a_token_for_another_registration_does_not_verify(ts_client, task_queue):
    fake = FakeUsers()
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        await wait_for(handle, lambda s: s.status == "waiting")
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=uuid.uuid4()))
        result = await handle.result()  # time skips to the deadline
    assert result.status == "expired"
    assert act.ACTIVATE_USER not in fake.calls


async def test_unverified_registration_expires_after_24_hours_and_compensates(time_skipping_env, task_queue):
    fake = FakeUsers()
    client = time_skipping_env.client
    async with worker(client, task_queue, fake):
        handle = await start(client, task_queue, registration_input())
        result = await handle.result()
        state = await saga_state(handle)
        # Workflow time, as recorded by the workflow itself when it finished compensating.
        elapsed = state.updated_at - (await handle.describe()).start_time
    assert result.status == "expired"
    assert timedelta(hours=24) <= elapsed < timedelta(hours=25)
    assert fake.calls == FORWARD + UNWIND  # reverse order of registration
    assert state.status == "expired"
    assert [(c.step, c.status) for c in state.compensations] == [
        ("create_pending_user", "done"),
        ("issue_verification_token", "done"),
    ]


@pytest.mark.parametrize(
    "failing, expected_unwind",
    [
        (act.CREATE_PENDING_USER, [act.DELETE_PENDING_USER]),
        (act.ISSUE_VERIFICATION_TOKEN, UNWIND),
        (act.ACTIVATE_USER, UNWIND),
    ],
)
async def test_failure_at_each_step_compensates_what_was_started_in_reverse(
    ts_client, task_queue, failing, expected_unwind
):
    fake = FakeUsers(fail_step=failing)
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        if failing == act.ACTIVATE_USER:
            await wait_for(handle, lambda s: s.status == "waiting")
            await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=fake.token_ids[0]))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        state = await saga_state(handle)
    assert isinstance(failure.value.cause.cause, ApplicationError)
    assert failure.value.cause.cause.type == "Boom"
    forward_until_failure = fake.calls[: fake.calls.index(failing) + 1]
    assert fake.calls == forward_until_failure + expected_unwind
    assert state.status == "compensated"
    assert "Boom" in state.error
    assert all(c.status == "done" for c in state.compensations)


async def test_taken_email_fails_fast_without_compensation(ts_client, task_queue):
    fake = FakeUsers(fail_step=act.CREATE_PENDING_USER, fail_with_type="EmailAlreadyRegistered")
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        state = await saga_state(handle)
    assert failure.value.cause.type == "EmailAlreadyRegistered"
    assert fake.calls == [act.CREATE_PENDING_USER]
    assert state.status == "failed"


async def test_cancellation_while_waiting_compensates_then_reports_cancelled(ts_client, task_queue):
    fake = FakeUsers()
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        await wait_for(handle, lambda s: s.status == "waiting")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        state = await saga_state(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert fake.calls == FORWARD + UNWIND
    assert state.status == "compensated" and state.error == "cancelled"


@pytest.mark.parametrize("decision, final_status", [("retry", "done"), ("skip", "skipped")])
async def test_failing_compensation_parks_for_an_operator_then_resumes(ts_client, task_queue, decision, final_status):
    fake = FakeUsers(broken_compensation=act.DELETE_PENDING_USER)
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        await wait_for(handle, lambda s: s.status == "waiting")
        await handle.cancel()
        parked = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert parked.compensations[0].status == "failed"
        assert "CompensationBroken" in parked.compensations[0].error
        assert SIGNAL_OPERATOR_DECISION in parked.waiting_for
        # Parked means parked: time passes, nothing changes until the operator acts.
        await asyncio.sleep(0.5)
        assert (await saga_state(handle)).status == "awaiting_operator"
        fake.healed = True
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action=decision, reason="test"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await saga_state(handle)
    assert state.status == "compensated"
    assert [(c.step, c.status) for c in state.compensations] == [
        ("create_pending_user", final_status),
        ("issue_verification_token", "done"),
    ]
    expected_deletes = 2 if decision == "retry" else 1
    assert fake.calls.count(act.DELETE_PENDING_USER) == expected_deletes


async def test_a_decision_sent_while_nothing_waits_is_not_kept_for_a_later_failure(ts_client, task_queue):
    fake = FakeUsers(broken_compensation=act.DELETE_PENDING_USER)
    async with worker(ts_client, task_queue, fake):
        handle = await start(ts_client, task_queue, registration_input())
        await wait_for(handle, lambda s: s.status == "waiting")
        # An early (or repeated) "skip": nothing is failing yet, so it must not be applied later.
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="skip"))
        await handle.cancel()
        parked = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert parked.compensations[0].status == "failed"  # parked, not silently skipped
        fake.healed = True
        await handle.signal(SIGNAL_OPERATOR_DECISION, OperatorDecision(action="retry"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await saga_state(handle)
    assert [c.status for c in state.compensations] == ["done", "done"]

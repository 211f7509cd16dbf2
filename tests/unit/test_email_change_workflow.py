"""The email-change saga under the time-skipping server: each path's steps and compensations, in order."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from models import activity_names as act
from models.contracts import EmailChangeInput, VerifyEmail
from models.errors import EMAIL_TAKEN, error_type
from models.names import SIGNAL_VERIFY_EMAIL, email_message_id, email_workflow_id
from tests.support.fake_activities import FakeEmailChanges
from tests.support.workflows import email_worker, saga_state, wait_for
from workers.main import Workers
from workflows.email_change import EmailChangeWorkflow

FORWARD = [act.RESERVE_EMAIL_CHANGE, act.ISSUE_EMAIL_CHANGE_TOKEN]
UNWIND = [act.REVOKE_VERIFICATION_TOKEN, act.RELEASE_EMAIL_CHANGE]


def _workers(client: Client, task_queue: str, fake: FakeEmailChanges) -> Workers:
    return Workers(
        [
            Worker(client, task_queue=task_queue, workflows=[EmailChangeWorkflow], activities=fake.activities()),
            email_worker(client),
        ]
    )


async def _start(client: Client, task_queue: str) -> WorkflowHandle:
    params = EmailChangeInput(change_id=uuid.uuid4(), user_id=uuid.uuid4(), new_email="new@example.com")
    return await client.start_workflow(
        EmailChangeWorkflow.run, params, id=f"email-change-{params.change_id}", task_queue=task_queue
    )


async def _described(client: Client, handle: WorkflowHandle, purpose: str) -> str:
    return (await client.get_workflow_handle(email_workflow_id(email_message_id(handle.id, purpose))).describe()).id


async def test_verified_change_swaps_then_tells_the_old_address(own_ts_client, task_queue):
    # its own server: the notice, a workflow of its own, may close after the saga
    ts_client = own_ts_client
    fake = FakeEmailChanges()
    async with _workers(ts_client, task_queue, fake):
        handle = await _start(ts_client, task_queue)
        await wait_for(handle, lambda s: s.status == "waiting")
        assert await _described(ts_client, handle, "verify-new-email")
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=uuid.uuid4()))  # not this change's token
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=fake.token_ids[0]))
        result = await handle.result()
        state = await saga_state(handle)
        assert await _described(ts_client, handle, "email-changed")
    assert result.status == "changed"
    assert fake.calls == [*FORWARD, act.SWAP_EMAIL]
    assert state.pivot == "swap_email" and state.status == "completed"
    assert state.completed_steps[-1] == "notify_old_address"


async def test_expiry_revokes_the_token_then_releases_the_address(own_ts_client, task_queue):
    ts_client = own_ts_client  # the verification email, a workflow of its own, outlives the saga too
    fake = FakeEmailChanges()
    async with _workers(ts_client, task_queue, fake):
        handle = await _start(ts_client, task_queue)
        result = await handle.result()  # the time-skipping server jumps the 24 h
        state = await saga_state(handle)
    assert result.status == "expired"
    assert fake.calls == [*FORWARD, *UNWIND] and fake.released == ["expired"]
    assert state.status == "expired" and [c.status for c in state.compensations] == ["done", "done"]


async def test_a_taken_address_reserves_nothing_and_compensates_nothing(ts_client, task_queue):
    fake = FakeEmailChanges(fail_step=act.RESERVE_EMAIL_CHANGE, fail_with_type=EMAIL_TAKEN)
    async with _workers(ts_client, task_queue, fake):
        handle = await _start(ts_client, task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert error_type(failure.value) == EMAIL_TAKEN
    assert fake.calls == [act.RESERVE_EMAIL_CHANGE]

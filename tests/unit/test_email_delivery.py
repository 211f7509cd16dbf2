"""The email delivery workflow under the time-skipping server: backoff, dead letters, operator decisions."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from models.contracts import EmailDecision, EmailRequest
from models.names import SIGNAL_EMAIL_DECISION
from tests.support.fake_email import FAR_SLOT_US, POLICY, FakeMail
from tests.support.workflows import saga_state, wait_for
from workers.main import Workers
from workflows.email_delivery import EmailDeliveryWorkflow


def workers(client: Client, task_queue: str, mail: FakeMail) -> Workers:
    return Workers(
        [Worker(client, task_queue=task_queue, workflows=[EmailDeliveryWorkflow], activities=mail.activities())]
    )


async def start(client: Client, task_queue: str, to: str = "ada@example.com"):
    req = EmailRequest(
        message_id=uuid.uuid4(), template="notice", to_address=to, params={"subject": "Hi", "body": "Hello"}
    )
    return await client.start_workflow(
        EmailDeliveryWorkflow.run, req, id=f"email-{req.message_id}", task_queue=task_queue
    )


async def test_temporary_failures_retry_on_the_backoff_schedule_then_send(time_skipping_env, task_queue):
    ts_client = time_skipping_env.client
    mail = FakeMail(outcomes=["4xx", "4xx", "4xx", "4xx", "ok"], clock=time_skipping_env.get_current_time)
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        result = await handle.result()
    assert result.state == "sent"
    times = [t for t, _ in mail.attempts]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # 5 s, then ×2 each time: 5, 10, 20, then capped at the 30 s maximum interval
    assert [round(g) for g in gaps] == [5, 10, 20, 30]
    assert mail.marks == []  # no dead letter, nothing for an operator


async def test_running_out_of_attempts_dead_letters(time_skipping_env, task_queue):
    ts_client = time_skipping_env.client
    mail = FakeMail(outcomes=["4xx"] * POLICY.maximum_attempts)
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        await time_skipping_env.sleep(timedelta(minutes=5))  # past all the backoff intervals
        state = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert len(mail.attempts) == POLICY.maximum_attempts
        assert mail.marks == ["dead_lettered"] and mail.suppressions == []  # temporary: nobody suppressed
        assert SIGNAL_EMAIL_DECISION in state.waiting_for
        await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="retry"))
        assert (await handle.result()).state == "sent"


async def test_permanent_failure_dead_letters_at_once_and_suppresses(ts_client, task_queue):
    mail = FakeMail(outcomes=["5xx"])
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue, "gone@example.com")
        state = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert len(mail.attempts) == 1  # no retries for a 5xx
        assert mail.suppressions == ["gone@example.com"]
        assert "550" in state.error and state.step == "dead_letter"
        # an operator corrects the address and retries
        await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="retry", to_address="ada@example.com"))
        result = await handle.result()
    assert result.state == "sent"
    assert [a for _, a in mail.attempts] == ["gone@example.com", "ada@example.com"]
    assert mail.marks == ["dead_lettered", "queued"]


async def test_discard_ends_the_dead_letter(ts_client, task_queue):
    mail = FakeMail(outcomes=["5xx"])
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        await wait_for(handle, lambda s: s.status == "awaiting_operator")
        await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="discard", reason="bounced"))
        result = await handle.result()
        state = await saga_state(handle)
    assert result.state == "discarded" and state.status == "completed"
    assert mail.marks == ["dead_lettered", "discarded"]
    assert len(mail.attempts) == 1


@pytest.mark.parametrize("address", ["suppressed@example.com"])
async def test_a_suppressed_address_is_not_sent_to(ts_client, task_queue, address):
    mail = FakeMail(suppressed_addresses={address})
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue, address)
        result = await handle.result()
    assert result.state == "suppressed"
    assert mail.attempts == []


async def test_a_decision_before_the_dead_letter_is_ignored(ts_client, task_queue):
    mail = FakeMail(outcomes=["5xx"])
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="discard"))  # nothing to decide yet…
        await wait_for(handle, lambda s: s.status == "awaiting_operator")
        await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="retry", to_address="ok@example.com"))
        result = await handle.result()
    assert result.state == "sent"  # …so the early "discard" did not decide this dead letter


async def test_a_message_sent_at_once_is_one_workflow_task_without_activity_tasks(ts_client, task_queue):
    mail = FakeMail()
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        assert (await handle.result()).state == "sent"
        events = [e async for e in handle.fetch_history_events()]
    kinds = Counter(EventType.Name(e.event_type) for e in events)
    assert kinds["EVENT_TYPE_WORKFLOW_TASK_COMPLETED"] == 1
    assert kinds["EVENT_TYPE_MARKER_RECORDED"] == 3  # policy, queue, send: local activities
    assert kinds["EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"] == 0
    # one search-attribute upsert per state an operator could see: running (send), completed
    assert kinds["EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"] == 2


async def test_a_far_send_slot_is_waited_for_on_a_timer_with_its_ticket_and_uses_no_attempt(
    time_skipping_env, task_queue
):
    ts_client = time_skipping_env.client
    far = POLICY.maximum_attempts + 1  # more waits for a slot than attempts: none of them is an attempt
    mail = FakeMail(outcomes=["far slot"] * far + ["ok"], clock=time_skipping_env.get_current_time)
    async with workers(ts_client, task_queue, mail):
        handle = await start(ts_client, task_queue)
        result = await handle.result()
    assert result.state == "sent" and mail.marks == []  # never dead-lettered
    times = [t for t, _ in mail.attempts]
    assert [round((b - a).total_seconds()) for a, b in itertools.pairwise(times)] == [40] * far  # on a timer
    assert mail.slots == [None] + [FAR_SLOT_US] * far  # each time back with the ticket it was given

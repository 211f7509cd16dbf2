"""The email delivery workflow under the time-skipping server: backoff, dead letters, operator decisions."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from models import activity_names as act
from models.contracts import (
    EmailDecision,
    EmailDelivery,
    EmailPolicy,
    EmailQueued,
    EmailRequest,
    MarkEmail,
    SendEmail,
    SuppressAddress,
)
from models.names import EMAIL_SEND_TASK_QUEUE, SIGNAL_EMAIL_DECISION
from tests.support.workflows import saga_state, wait_for
from workers.main import Workers
from workflows.email_delivery import EmailDeliveryWorkflow

POLICY = EmailPolicy(
    initial_interval_seconds=5,
    backoff_coefficient=2,
    maximum_interval_seconds=30,
    maximum_attempts=6,
    send_timeout_seconds=10,
)


@dataclass
class FakeMail:
    """`outcomes` is consumed one per send attempt: "ok", "4xx" (temporary) or "5xx" (permanent)."""

    outcomes: list[str] = field(default_factory=list)
    suppressed_addresses: set[str] = field(default_factory=set)
    attempts: list[tuple[datetime, str]] = field(default_factory=list)  # (start time, address)
    marks: list[str] = field(default_factory=list)
    suppressions: list[str] = field(default_factory=list)

    def activities(self):
        @activity.defn(name=act.QUEUE_EMAIL)
        async def queue(req: EmailRequest) -> EmailQueued:
            return EmailQueued(
                message_id=req.message_id,
                to_address=req.to_address,
                policy=POLICY,
                suppressed=req.to_address in self.suppressed_addresses,
            )

        @activity.defn(name=act.SEND_EMAIL)
        async def send(req: SendEmail) -> EmailDelivery:
            self.attempts.append((activity.info().started_time, req.to_address))
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if outcome == "4xx":
                raise RuntimeError("SMTP 421 try again later")
            if outcome == "5xx":
                raise ApplicationError("SMTP 550 mailbox unavailable", type="SmtpPermanentFailure", non_retryable=True)
            return EmailDelivery(message_id=req.request.message_id, state="sent", reply="250 OK")

        @activity.defn(name=act.MARK_EMAIL)
        async def mark(req: MarkEmail) -> None:
            self.marks.append(req.state)

        @activity.defn(name=act.SUPPRESS_ADDRESS)
        async def suppress(req: SuppressAddress) -> None:
            self.suppressions.append(req.address)

        return [queue, mark, suppress], [send]


def workers(client: Client, task_queue: str, mail: FakeMail) -> Workers:
    bookkeeping, sending = mail.activities()
    return Workers(
        [
            Worker(client, task_queue=task_queue, workflows=[EmailDeliveryWorkflow], activities=bookkeeping),
            Worker(client, task_queue=EMAIL_SEND_TASK_QUEUE, activities=sending),
        ]
    )


async def start(client: Client, task_queue: str, to: str = "ada@example.com"):
    req = EmailRequest(
        message_id=uuid.uuid4(), template="notice", to_address=to, params={"subject": "Hi", "body": "Hello"}
    )
    return await client.start_workflow(
        EmailDeliveryWorkflow.run, req, id=f"email-{req.message_id}", task_queue=task_queue
    )


async def test_temporary_failures_retry_on_the_backoff_schedule_then_send(ts_client, task_queue):
    mail = FakeMail(outcomes=["4xx", "4xx", "4xx", "4xx", "ok"])
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

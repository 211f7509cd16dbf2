"""A stand-in for the EmailDelivery workflow, so sagas under test hand their emails to something; and fakes of the
real EmailDelivery workflow's activities.

(The time-skipping server cannot skip time while a child workflow waits for a worker that never comes.)
"""

from __future__ import annotations

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        EmailDelivery,
        EmailPolicy,
        EmailQueued,
        EmailRequest,
        EmailResult,
        MarkEmail,
        SendEmail,
        SuppressAddress,
    )
    from models.errors import SMTP_PERMANENT
    from models.names import EMAIL_DELIVERY_WORKFLOW


@workflow.defn(name=EMAIL_DELIVERY_WORKFLOW)
class FakeEmailDelivery:
    @workflow.run
    async def run(self, req: EmailRequest) -> EmailResult:
        return EmailResult(message_id=req.message_id, state="sent")


class FakeMailActivities:
    """The real EmailDelivery workflow's activities, faked: each send attempt takes the next of `outcomes` ("ok",
    "4xx": temporary, "5xx": permanent); `send` is the activity for the send task queue, the rest run locally or
    on the workflow's queue."""

    def __init__(self, outcomes: list[str] | None = None, policy: EmailPolicy | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.policy = policy or EmailPolicy(
            initial_interval_seconds=5,
            backoff_coefficient=2,
            maximum_interval_seconds=30,
            maximum_attempts=3,
            send_timeout_seconds=10,
        )
        self.marks: list[str] = []

    def workflow_activities(self) -> list:
        @activity.defn(name=act.QUEUE_EMAIL)
        async def queue(req: EmailRequest) -> EmailQueued:
            return EmailQueued(message_id=req.message_id, to_address=req.to_address or "", policy=self.policy)

        @activity.defn(name=act.MARK_EMAIL)
        async def mark(req: MarkEmail) -> None:
            self.marks.append(req.state)

        @activity.defn(name=act.SUPPRESS_ADDRESS)
        async def suppress(req: SuppressAddress) -> None:
            return None

        return [queue, mark, suppress]

    def send_activities(self) -> list:
        @activity.defn(name=act.SEND_EMAIL)
        async def send(req: SendEmail) -> EmailDelivery:
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if outcome == "4xx":
                raise ApplicationError("SMTP 421 try again later", type="SmtpTemporaryFailure")
            if outcome == "5xx":
                raise ApplicationError("SMTP 550 mailbox unavailable", type=SMTP_PERMANENT, non_retryable=True)
            return EmailDelivery(message_id=req.request.message_id, state="sent", reply="250 OK")

        return [send]

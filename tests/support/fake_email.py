"""Stand-ins for email delivery: `FakeEmailDelivery`, a workflow so sagas under test hand their emails to
something (the time-skipping server cannot skip time while a child workflow waits for a worker that never
comes); `FakeMail`, the pipeline's activities, so the real EmailDelivery workflow runs without SMTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

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
    from models.errors import SEND_RATE_LIMITED
    from models.names import EMAIL_DELIVERY_WORKFLOW


@workflow.defn(name=EMAIL_DELIVERY_WORKFLOW)
class FakeEmailDelivery:
    @workflow.run
    async def run(self, req: EmailRequest) -> EmailResult:
        return EmailResult(message_id=req.message_id, state="sent")


POLICY = EmailPolicy(
    initial_interval_seconds=5,
    backoff_coefficient=2,
    maximum_interval_seconds=30,
    maximum_attempts=6,
    send_timeout_seconds=10,
)
FAR_SLOT_US = 1_900_000_000_000_000  # a send-rate ticket (µs on Redis's clock)


@dataclass
class FakeMail:
    """`outcomes` is consumed one per send attempt: "ok", "4xx" (temporary) or "5xx" (permanent)."""

    outcomes: list[str] = field(default_factory=list)
    suppressed_addresses: set[str] = field(default_factory=set)
    attempts: list[tuple[datetime, str]] = field(default_factory=list)  # (start time, address)
    # The send is a local activity: its info's times are the worker's wall clock, which a skipped timer does not
    # move; the backoff is measured on the test server's clock instead when given.
    clock: Callable[[], Awaitable[datetime]] | None = None
    slots: list[int | None] = field(default_factory=list)  # the send-rate ticket each attempt came with
    marks: list[str] = field(default_factory=list)
    suppressions: list[str] = field(default_factory=list)

    def activities(self):
        @activity.defn(name=act.EMAIL_POLICY)
        async def policy() -> EmailPolicy:
            return POLICY

        @activity.defn(name=act.QUEUE_EMAIL)
        async def queue(req: EmailRequest) -> EmailQueued:
            return EmailQueued(
                message_id=req.message_id,
                to_address=req.to_address,
                suppressed=req.to_address in self.suppressed_addresses,
            )

        @activity.defn(name=act.SEND_EMAIL)
        async def send(req: SendEmail) -> EmailDelivery:
            now = await self.clock() if self.clock else activity.info().started_time
            self.attempts.append((now, req.to_address))
            self.slots.append(req.send_slot_us)
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if outcome == "far slot":  # as the real send when its rate-limit slot is 40 s ahead
                raise ApplicationError(
                    "waiting for a send slot",
                    {"slot_us": FAR_SLOT_US, "retry_after_seconds": 40.0},
                    type=SEND_RATE_LIMITED,
                    non_retryable=True,
                )
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

        return [policy, queue, send, mark, suppress]

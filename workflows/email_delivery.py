"""Email delivery: one workflow per message (`email-{message_id}`) on its own task queue.

queue (track, suppression check, render once) → send with exponential backoff for temporary failures
(4xx, timeouts, relay down) → sent. A permanent failure (5xx) suppresses the address for its tenant and goes
straight to the dead letter without retries; so does running out of attempts. A dead letter waits, with
SagaStatus `awaiting_operator`, for an operator's `email_decision` signal: retry (optionally to a corrected
address) or discard.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        EmailDecision,
        EmailDelivery,
        EmailQueued,
        EmailRequest,
        EmailResult,
        MarkEmail,
        SendEmail,
        SuppressAddress,
    )
    from models.errors import CIRCUIT_OPEN, RECIPIENT_GONE, RENDER_FAILED, SMTP_PERMANENT, error_type
    from models.names import (
        EMAIL_DELIVERY_WORKFLOW,
        EMAIL_SEND_TASK_QUEUE,
        QUERY_EMAIL_STATE,
        SIGNAL_EMAIL_DECISION,
    )
    from workflows.saga import Saga, describe_error

NEVER_RETRY = [SMTP_PERMANENT, RENDER_FAILED, RECIPIENT_GONE]
# queue, suppress and mark: the pipeline's own bookkeeping, retried without limit
BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))


@workflow.defn(name=EMAIL_DELIVERY_WORKFLOW)
class EmailDeliveryWorkflow:
    def __init__(self) -> None:
        self.saga = Saga("email_delivery")
        self.decisions: list[EmailDecision] = []
        self.state = "queued"
        self.attempts = 0

    @workflow.run
    async def run(self, req: EmailRequest) -> EmailResult:
        # A local step: the search attributes are left to the send's status, set in the same workflow task.
        self.saga.set_status("running", step="queue", details="recording the message", upsert=False)
        # Local, in the first workflow task: idempotent by message id (a re-run finds its row).
        queued: EmailQueued = await workflow.execute_local_activity(
            act.QUEUE_EMAIL,
            req,
            result_type=EmailQueued,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        if queued.suppressed:
            self.state = "suppressed"
            self.saga.complete("not sent: the address is on the suppression list")
            return EmailResult(message_id=req.message_id, state="suppressed")

        to_address, policy = queued.to_address, queued.policy
        retry = RetryPolicy(
            initial_interval=timedelta(seconds=policy.initial_interval_seconds),
            backoff_coefficient=policy.backoff_coefficient,
            maximum_interval=timedelta(seconds=policy.maximum_interval_seconds),
            maximum_attempts=policy.maximum_attempts,
            non_retryable_error_types=[*NEVER_RETRY, CIRCUIT_OPEN],  # an open circuit is waited out, not retried
        )
        while True:
            self.state = "sending"
            self.saga.set_status("running", step="send", details="sending over SMTP (temporary failures retried)")
            try:
                await self.saga.execute_activity(
                    act.SEND_EMAIL,
                    SendEmail(request=req, to_address=to_address),
                    task_queue=EMAIL_SEND_TASK_QUEUE,
                    start_to_close_timeout=timedelta(seconds=policy.send_timeout_seconds + 10),
                    retry_policy=retry,
                    result_type=EmailDelivery,
                )
            except ActivityError as err:
                reason = describe_error(err)
                if error_type(err) == SMTP_PERMANENT:
                    await workflow.execute_activity(
                        act.SUPPRESS_ADDRESS,
                        SuppressAddress(
                            tenant_id=req.tenant_id, address=to_address, reason=reason, message_id=req.message_id
                        ),
                        start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                        retry_policy=BOOKKEEPING_RETRY,
                    )
                decision = await self._dead_letter(req, reason)
                if decision.action == "discard":
                    await self._mark(req, "discarded", decision.reason or "discarded by an operator")
                    self.state = "discarded"
                    self.saga.complete("discarded by an operator")
                    return EmailResult(message_id=req.message_id, state="discarded")
                to_address = decision.to_address or to_address
                await self._mark(
                    req,
                    "queued",
                    f"retry requested by an operator ({decision.reason or 'no reason'})",
                    to_address=to_address,
                )
                continue
            self.state = "sent"
            self.saga.complete("sent")
            return EmailResult(message_id=req.message_id, state="sent")

    async def _dead_letter(self, req: EmailRequest, reason: str) -> EmailDecision:
        self.state = "dead_lettered"
        # Park first, then record: whoever sees the row say dead_lettered also sees the saga waiting for them.
        self.saga.state.error = reason
        self.saga.set_status(
            "awaiting_operator",
            step="dead_letter",
            waiting_for=(
                f"operator: not delivered ({reason}); signal '{SIGNAL_EMAIL_DECISION}' with "
                '{"action": "retry"} (optionally "to_address") or {"action": "discard"}'
            ),
        )
        await self._mark(req, "dead_lettered", reason)
        await workflow.wait_condition(lambda: bool(self.decisions))
        return self.decisions.pop(0)

    async def _mark(self, req: EmailRequest, state: str, reply: str, to_address: str | None = None) -> None:
        await workflow.execute_activity(
            act.MARK_EMAIL,
            MarkEmail(
                message_id=req.message_id, tenant_id=req.tenant_id, state=state, reply=reply, to_address=to_address
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    @workflow.signal(name=SIGNAL_EMAIL_DECISION)
    def decide(self, decision: EmailDecision) -> None:
        # Only the dead letter waiting now is decided; a repeated or early decision is not kept for later.
        if self.state != "dead_lettered" or self.decisions:
            workflow.logger.warning("email decision ignored: the message is %s", self.state)
            return
        self.decisions.append(decision)

    @workflow.query(name=QUERY_EMAIL_STATE)
    def current_state(self) -> str:
        return self.state

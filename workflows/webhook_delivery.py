"""Webhook delivery: one workflow per (endpoint, event), `webhook-{delivery_id}`, on `prognet-webhooks`.

Each attempt is one activity with no HTTP retries of its own; the waits between attempts are durable timers
(WEBHOOK_RETRY_SCHEDULE_SECONDS, Svix's by default), so the schedule is exact and visible in history. 2xx is
delivered. A target the SSRF check refuses, or an endpoint that was disabled, dead-letters at once; running out of
attempts dead-letters too. A dead letter waits, with SagaStatus `awaiting_operator`, for a `webhook_decision`
signal (retry: the schedule again from the top; discard). When the endpoint has failed every attempt for
WEBHOOK_DISABLE_AFTER, the endpoint is disabled and its tenant's owners are emailed.

No URL and no secret ever enter history: the attempt reads them from the endpoint's row.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        DisabledWebhookEndpoint,
        DisableWebhookEndpoint,
        EmailRequest,
        MarkWebhookDelivery,
        WebhookAttempt,
        WebhookAttemptResult,
        WebhookDecision,
        WebhookDeliveryInput,
        WebhookDeliveryResult,
        WebhookDeliveryStatus,
        WebhookPolicy,
    )
    from models.names import (
        QUERY_WEBHOOK_STATE,
        SIGNAL_WEBHOOK_DECISION,
        WEBHOOK_DELIVERY_WORKFLOW,
        email_message_id,
    )
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga

BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
# An attempt's own failures (its database read, a worker lost mid-POST) are retried a little; the receiver's
# answer is the activity's result, never an exception, so it is never retried here.
ATTEMPT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
ENDPOINT_GONE = "the endpoint was deleted"


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
class WebhookDeliveryWorkflow:
    def __init__(self) -> None:
        self.saga = Saga("webhook_delivery")
        self.decisions: list[WebhookDecision] = []
        self.status: WebhookDeliveryStatus = "pending"
        self.attempts = 0

    @workflow.run
    async def run(self, req: WebhookDeliveryInput) -> WebhookDeliveryResult:
        policy: WebhookPolicy = await workflow.execute_local_activity(
            act.WEBHOOK_POLICY, start_to_close_timeout=timedelta(seconds=10), result_type=WebhookPolicy
        )
        self.saga.set_status("running", step="record", details="recording the delivery")
        exists: bool = await workflow.execute_activity(
            act.WEBHOOK_RECORD,
            req,
            result_type=bool,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        if not exists:
            return self._end(req, "failed", ENDPOINT_GONE)
        while True:
            reason = await self._attempt_on_schedule(req, policy)
            if reason is None:
                return self._end(req, "delivered", "delivered")
            if reason == ENDPOINT_GONE:  # nothing left to deliver to, nor to retry later
                return self._end(req, "failed", ENDPOINT_GONE)
            decision = await self._dead_letter(req, reason)
            if decision.action == "discard":
                await self._mark(req, "discarded", decision.reason or "discarded")
                return self._end(req, "discarded", "discarded")
            await self._mark(req, "pending", f"retry requested ({decision.reason or 'no reason'})")

    async def _attempt_on_schedule(self, req: WebhookDeliveryInput, policy: WebhookPolicy) -> str | None:
        """None once delivered; else why not (ENDPOINT_GONE, or why the delivery goes to the dead letter)."""
        schedule = policy.schedule_seconds
        for index, wait in enumerate(schedule):
            if wait > 0:
                self.status = "retrying"
                self.saga.set_status(
                    "waiting", step="retry_wait", waiting_for=f"attempt {self.attempts + 1} in {wait:g} s"
                )
                await self._mark(req, "retrying", None, next_attempt_at=workflow.now() + timedelta(seconds=wait))
                await workflow.sleep(timedelta(seconds=wait))
            self.attempts += 1
            self.status = "pending"
            self.saga.set_status("running", step="attempt", details=f"attempt {self.attempts}")
            result: WebhookAttemptResult = await workflow.execute_activity(
                act.WEBHOOK_ATTEMPT,
                WebhookAttempt(delivery=req, attempt=self.attempts, disable_after_seconds=policy.disable_after_seconds),
                result_type=WebhookAttemptResult,
                start_to_close_timeout=timedelta(seconds=policy.timeout_seconds + 15),
                retry_policy=ATTEMPT_RETRY,
            )
            if result.outcome == "delivered":
                return None
            if result.outcome == "endpoint_gone":
                return ENDPOINT_GONE
            if result.outcome == "endpoint_disabled":
                return "the endpoint is disabled (enable it, then retry)"
            if result.outcome == "refused":
                return f"target refused: {result.error}"
            if result.disable:
                await self._disable_endpoint(req, result)
                return f"the endpoint was disabled after failing too long (last: {_describe(result)})"
            if index == len(schedule) - 1:
                return f"no attempt succeeded ({self.attempts} attempts; last: {_describe(result)})"
        return "no attempt scheduled"

    async def _disable_endpoint(self, req: WebhookDeliveryInput, result: WebhookAttemptResult) -> None:
        self.saga.set_status("running", step="disable_endpoint", details="the endpoint fails every delivery")
        disabled: DisabledWebhookEndpoint = await workflow.execute_activity(
            act.WEBHOOK_DISABLE_ENDPOINT,
            DisableWebhookEndpoint(
                endpoint_id=req.endpoint_id,
                tenant_id=req.tenant_id,
                reason=f"every delivery failed for too long (last: {_describe(result)})",
            ),
            result_type=DisabledWebhookEndpoint,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        if not disabled.disabled:
            return  # another delivery disabled it first, and told the owners
        wid = workflow.info().workflow_id
        for owner in disabled.owner_ids:
            await hand_off_email(
                self.saga,
                f"email_owner_{owner}",
                EmailRequest(
                    message_id=email_message_id(wid, f"endpoint-disabled:{owner}"),
                    template="notice",
                    tenant_id=req.tenant_id,
                    to_user_id=owner,
                    params={
                        "subject": "A webhook endpoint was disabled",
                        "body": (
                            f"Every delivery to your webhook endpoint {req.endpoint_id} "
                            f"(host {disabled.url_host}) has failed for too long, so it was disabled. "
                            "Fix the receiver, enable the endpoint again, and retry its dead-lettered deliveries."
                        ),
                    },
                ),
            )

    async def _dead_letter(self, req: WebhookDeliveryInput, reason: str) -> WebhookDecision:
        self.status = "dead_lettered"
        # Park first, then record: whoever sees the row say dead_lettered also sees the workflow waiting.
        self.saga.state.error = reason
        self.saga.set_status(
            "awaiting_operator",
            step="dead_letter",
            waiting_for=(
                f"operator or tenant admin: not delivered ({reason}); POST …/deliveries/{req.delivery_id}/retry, "
                f'or signal \'{SIGNAL_WEBHOOK_DECISION}\' with {{"action": "retry"}} or {{"action": "discard"}}'
            ),
        )
        await self._mark(req, "dead_lettered", reason)
        await workflow.wait_condition(lambda: bool(self.decisions))
        self.saga.state.error = None
        return self.decisions.pop(0)

    async def _mark(self, req: WebhookDeliveryInput, status: WebhookDeliveryStatus, error: str | None, **kw) -> None:
        await workflow.execute_activity(
            act.WEBHOOK_MARK,
            MarkWebhookDelivery(delivery_id=req.delivery_id, tenant_id=req.tenant_id, status=status, error=error, **kw),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    def _end(self, req: WebhookDeliveryInput, status: WebhookDeliveryStatus, details: str) -> WebhookDeliveryResult:
        self.status = status
        self.saga.complete(details)
        return WebhookDeliveryResult(delivery_id=req.delivery_id, status=status, attempts=self.attempts)

    @workflow.signal(name=SIGNAL_WEBHOOK_DECISION)
    def decide(self, decision: WebhookDecision) -> None:
        # Only the dead letter waiting now is decided; a repeated or early decision is not kept for later.
        if self.status != "dead_lettered" or self.decisions:
            workflow.logger.warning("webhook decision ignored: the delivery is %s", self.status)
            return
        self.decisions.append(decision)

    @workflow.query(name=QUERY_WEBHOOK_STATE)
    def current_state(self) -> str:
        return self.status


def _describe(result: WebhookAttemptResult) -> str:
    if result.status_code is not None:
        return f"HTTP {result.status_code}"
    return result.error or "no answer"

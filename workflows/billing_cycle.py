"""One billing cycle: `billing-{subscription_id}-{period_index}` — invoice → PaymentIntent → outcome → paid/unpaid.

issue invoice (per-tenant sequential number, idempotent by workflow id) → create and confirm a PaymentIntent
(idempotency key `{workflow_id}:pi:{attempt}`) → the outcome: the PaymentIntent's own answer when it is final,
else the `payment_outcome` signal the Stripe webhook endpoint sends, with a polling fallback
(`retrieve_payment_intent` every `poll_interval_seconds`).

- Paid: invoice marked paid and the `invoice.paid` event, in one transaction (the events table is the outbox),
  then the receipt email, then the parent is told.
- Declined: dunning. The invoice records the attempt (decline code, PaymentIntent, next retry time), then the
  parent subscription is told `past_due`; at each day of the schedule (counted from the first failure; default
  1, 3, 5, 7) a reminder email, then a new charge attempt (same invoice, next attempt's key). A
  `payment_method_updated` signal retries at once with the new method (no slot of the schedule used). The
  schedule exhausted: invoice uncollectible with its `invoice.uncollectible` event (one transaction), notice
  email, the parent is told `unpaid` (it suspends the tenant).
- A later step failing after a successful charge refunds it: the refund is registered as a compensation before
  the first charge and refunds whichever of the cycle's PaymentIntents succeeded (none → nothing to do); the
  invoice is voided.

Round trips: issuing the invoice, creating the PaymentIntent, marking the invoice and handing an email to the
delivery pipeline are local activities (each is idempotent by the workflow id, the idempotency key or the
message id, so the workflow task running one again after a crash is safe), and they upsert no search attribute
of their own: a cycle paid at once is one workflow task (two with a parent to tell). Emails are started through
the worker's client (`activities/email_handoff.py`), not as children: each keeps its own workflow, retries and
dead letter, and costs the cycle no task.

Starting it twice is a no-op: the business id rejects a second start, and even a second run (a reset, a
backfill) reuses the invoice and the PaymentIntent idempotency keys, so it cannot charge twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.billing_cycle_contracts import (
        BillingCycleInput,
        BillingCycleResult,
        BillingCycleState,
        CreatePaymentIntent,
        CycleStatusChanged,
        Invoice,
        IssueInvoice,
        MarkInvoicePaid,
        MarkInvoiceUncollectible,
        PaymentIntentInfo,
        PaymentIntentRef,
        PaymentMethodUpdated,
        PaymentOutcome,
        RecordDeclinedAttempt,
        Refunded,
        RefundPayment,
        VoidInvoice,
    )
    from models.contracts import EmailRequest
    from models.names import (
        BILLING_CYCLE_WORKFLOW,
        QUERY_BILLING_CYCLE_STATE,
        SIGNAL_BILLING_CYCLE_STATUS,
        SIGNAL_PAYMENT_METHOD_UPDATED,
        SIGNAL_PAYMENT_OUTCOME,
        email_message_id,
    )
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga, wait_until


def money(amount: int, currency: str) -> str:
    return f"{amount // 100}.{amount % 100:02d} {currency.upper()}"


async def sleep_until(when: datetime, wake: Callable[[], bool]) -> bool:
    """A durable timer to `when` that `wake()` interrupts; True when woken, False when the time came. A
    cancellation the SDK dropped meanwhile is raised here (`saga.wait_until`)."""
    return await wait_until(wake, when - workflow.now())


@workflow.defn(name=BILLING_CYCLE_WORKFLOW)
class BillingCycleWorkflow:
    @workflow.init
    def __init__(self, params: BillingCycleInput) -> None:
        self.params = params
        self.saga = Saga("billing_cycle", params.retry_policies)
        self.state = BillingCycleState(payment_method=params.payment_method)
        self.outcomes: dict[str, PaymentOutcome] = {}
        self.method_changed = False
        self.answered_at: datetime | None = None  # when the last charge attempt's create call answered

    @workflow.run
    async def run(self, params: BillingCycleInput) -> BillingCycleResult:
        return await self.saga.run(self._bill)

    async def _bill(self) -> BillingCycleResult:
        p, wid = self.params, workflow.info().workflow_id
        invoice: Invoice = await self.saga.step(
            "issue_invoice",
            act.ISSUE_INVOICE,
            IssueInvoice(
                workflow_id=wid,
                tenant_id=p.tenant_id,
                subscription_id=p.subscription_id,
                plan_id=p.plan_id,
                kind=p.kind,
                period_index=p.period_index,
                period_start=p.period_start,
                period_end=p.period_end,
                amount=p.amount,
                currency=p.currency,
                stripe_customer_id=p.stripe_customer_id,
            ),
            compensation=(
                act.VOID_INVOICE,
                lambda: VoidInvoice(
                    workflow_id=wid,
                    tenant_id=p.tenant_id,
                    invoice_id=self.state.invoice_id,
                    reason=self.saga.state.error or "unknown",
                ),
            ),
            result_type=Invoice,
            local=True,  # idempotent by workflow id: a re-run finds the cycle's live invoice
        )
        self.state.invoice_id, self.state.invoice_number = invoice.invoice_id, invoice.number
        if invoice.status == "paid" and invoice.payment_intent_id:
            # Paid before: never charge twice. A run again (a reset, a re-run after Stripe forgot the idempotency
            # keys, 24 h), or this run's first task run again after a worker crash (its local activities' results
            # were not recorded yet: the invoice may have been paid in it). The receipt is handed over again: a
            # no-op for a receipt already started (only one whose workflow failed, or one past the namespace's
            # retention, is started again), and it is never lost to such a crash.
            self.state.attempt = invoice.attempts
            return await self._paid(PaymentOutcome(payment_intent_id=invoice.payment_intent_id, status="succeeded"))
        # Registered before the first charge: whatever succeeded is refunded if a later step fails.
        self.saga.add_compensation(
            "charge",
            act.REFUND_PAYMENT,
            lambda: RefundPayment(
                idempotency_key=f"{wid}:refund",
                tenant_id=p.tenant_id,
                payment_intent_ids=list(self.state.payment_intent_ids),
                reason=f"billing cycle unwound: {self.saga.state.error or 'unknown'}",
            ),
        )

        retry_times: list[datetime] = []
        used = 0  # scheduled dunning retries already made
        while True:
            # Reset before the charge, not after: a new card arriving during the charge must still retry at once.
            self.method_changed = False
            outcome = await self._charge()
            if outcome.status == "succeeded":
                return await self._paid(outcome)
            self.state.last_decline_code = outcome.decline_code
            if self.state.first_failure_at is None:
                # The decline's own time: a charge answered by a local activity came after this task's now()
                self.state.first_failure_at = max(workflow.now(), self.answered_at or workflow.now())
                retry_times = [self.state.first_failure_at + timedelta(days=d) for d in sorted(p.dunning_schedule_days)]
            next_retry = retry_times[used] if used < len(retry_times) else None
            # Before the parent hears `past_due`: a subscription shown past due shows why on its invoice.
            await self.saga.step(
                f"record_decline_{self.state.attempt}",
                act.RECORD_DECLINED_ATTEMPT,
                RecordDeclinedAttempt(
                    invoice_id=self.state.invoice_id,
                    tenant_id=p.tenant_id,
                    workflow_id=wid,
                    attempt=self.state.attempt,
                    payment_intent_id=outcome.payment_intent_id,
                    decline_code=outcome.decline_code,
                    next_retry_at=next_retry,
                ),
                local=True,  # idempotent by attempt: the same attempt recorded again changes nothing
            )
            if next_retry is None:
                return await self._unpaid()
            self.state.status, self.state.next_retry_at = "dunning", next_retry
            await self._tell_parent("past_due", next_retry)
            self.saga.set_status(
                "waiting",
                step="dunning",
                waiting_for=(
                    f"charge declined ({outcome.decline_code or 'no code'}); next attempt at {next_retry.isoformat()} "
                    f"or at once on a '{SIGNAL_PAYMENT_METHOD_UPDATED}' signal"
                ),
            )
            if not await sleep_until(next_retry, lambda: self.method_changed):
                used += 1
                self.state.reminders_sent += 1
                await self._hand_over(
                    f"send_reminder_{used}",
                    self._email(
                        f"reminder-{used}",
                        f"Payment reminder: invoice {self.state.invoice_number}",
                        f"We could not charge {money(p.amount, p.currency)} for invoice {self.state.invoice_number}. "
                        "We are trying again today; you can update your payment method at any time.",
                    ),
                )

    async def _charge(self) -> PaymentOutcome:
        p, wid = self.params, workflow.info().workflow_id
        self.state.attempt += 1
        attempt = self.state.attempt
        self.state.status = "charging"
        pi: PaymentIntentInfo = await self.saga.step(
            f"charge_attempt_{attempt}",
            act.CREATE_PAYMENT_INTENT,
            CreatePaymentIntent(
                idempotency_key=f"{wid}:pi:{attempt}",
                invoice_id=self.state.invoice_id,
                tenant_id=p.tenant_id,
                subscription_id=p.subscription_id,
                workflow_id=wid,
                amount=p.amount,
                currency=p.currency,
                stripe_customer_id=p.stripe_customer_id,
                payment_method=self.state.payment_method,
            ),
            result_type=PaymentIntentInfo,
            local=True,  # idempotent by the attempt's key: run again, Stripe replays its first answer
        )
        pi_id = pi.payment_intent_id
        self.answered_at = pi.answered_at
        self.state.payment_intent_ids.append(pi_id)
        self._record(
            PaymentOutcome(payment_intent_id=pi_id, status=pi.status, decline_code=pi.decline_code)
            if pi.status != "pending"
            else None
        )
        deadline = workflow.now() + timedelta(seconds=p.payment_timeout_seconds)
        self.state.status = "awaiting_payment"
        while pi_id not in self.outcomes:
            self.saga.set_status(
                "waiting",
                step=f"await_payment_{attempt}",
                waiting_for=(
                    f"the outcome of PaymentIntent {pi_id}: a '{SIGNAL_PAYMENT_OUTCOME}' signal (webhook), "
                    f"polled every {p.poll_interval_seconds} s"
                ),
            )
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                # It may still succeed at Stripe; the next attempt would then charge a second time.
                await workflow.execute_activity(
                    act.REFUND_PAYMENT,
                    RefundPayment(
                        idempotency_key=f"{wid}:timeout:{attempt}",
                        tenant_id=p.tenant_id,
                        payment_intent_ids=[pi_id],
                        reason="no outcome in time",
                    ),
                    result_type=Refunded,
                    start_to_close_timeout=timedelta(seconds=30),
                )
                return PaymentOutcome(payment_intent_id=pi_id, status="failed", decline_code="payment_timeout")
            if await sleep_until(
                workflow.now() + timedelta(seconds=min(p.poll_interval_seconds, remaining)),
                lambda: pi_id in self.outcomes,
            ):
                break
            polled: PaymentIntentInfo = await workflow.execute_activity(
                act.RETRIEVE_PAYMENT_INTENT,
                PaymentIntentRef(payment_intent_id=pi_id),
                result_type=PaymentIntentInfo,
                start_to_close_timeout=timedelta(seconds=30),
            )
            if polled.status != "pending":
                self._record(
                    PaymentOutcome(payment_intent_id=pi_id, status=polled.status, decline_code=polled.decline_code)
                )
        return self.outcomes[pi_id]

    def _record(self, outcome: PaymentOutcome | None) -> None:
        """First answer wins, except that a success is never overwritten (duplicates, out-of-order events)."""
        if outcome is None:
            return
        known = self.outcomes.get(outcome.payment_intent_id)
        if known is None or (known.status != "succeeded" and outcome.status == "succeeded"):
            self.outcomes[outcome.payment_intent_id] = outcome

    async def _paid(self, outcome: PaymentOutcome) -> BillingCycleResult:
        p, wid = self.params, workflow.info().workflow_id
        self.state.status, self.state.next_retry_at = "paid", None
        self.state.paid_payment_intent_id = outcome.payment_intent_id
        await self.saga.step(
            "mark_invoice_paid",
            act.MARK_INVOICE_PAID,
            MarkInvoicePaid(
                invoice_id=self.state.invoice_id,
                tenant_id=p.tenant_id,
                payment_intent_id=outcome.payment_intent_id,
                workflow_id=wid,
                attempts=self.state.attempt or None,
            ),
            local=True,  # idempotent: paid by this PaymentIntent already is a no-op (its event was recorded then)
        )
        await self._hand_over(
            "send_receipt",
            self._email(
                "receipt",
                f"Receipt for invoice {self.state.invoice_number}",
                f"Thank you: we received {money(p.amount, p.currency)} for invoice {self.state.invoice_number} "
                f"({p.period_start.date()} – {p.period_end.date()}).",
            ),
        )
        await self._tell_parent("paid")
        self.saga.complete(f"paid: invoice {self.state.invoice_number}, {outcome.payment_intent_id}")
        return self._result("paid")

    async def _unpaid(self) -> BillingCycleResult:
        p, wid = self.params, workflow.info().workflow_id
        self.state.status, self.state.next_retry_at = "unpaid", None
        await self.saga.step(
            "mark_invoice_uncollectible",
            act.MARK_INVOICE_UNCOLLECTIBLE,
            MarkInvoiceUncollectible(
                invoice_id=self.state.invoice_id,
                tenant_id=p.tenant_id,
                workflow_id=wid,
                decline_code=self.state.last_decline_code,
            ),
            local=True,  # idempotent: already uncollectible is a no-op (its event was recorded then)
        )
        if p.kind == "period" and p.notify_unpaid:
            await self._hand_over(
                "send_unpaid_notice",
                self._email(
                    "unpaid",
                    f"Invoice {self.state.invoice_number} is unpaid",
                    f"After {self.state.attempt} attempts we could not collect {money(p.amount, p.currency)}. "
                    "Your subscription has ended and your organisation is suspended; an owner or admin can "
                    "subscribe again with another payment method to lift the suspension.",
                ),
            )
        await self._tell_parent("unpaid")
        self.saga.complete(f"unpaid after {self.state.attempt} attempts")
        return self._result("unpaid")

    def _result(self, status: str) -> BillingCycleResult:
        p = self.params
        return BillingCycleResult(
            subscription_id=p.subscription_id,
            period_index=p.period_index,
            kind=p.kind,
            status=status,
            amount=p.amount,
            invoice_id=self.state.invoice_id,
            invoice_number=self.state.invoice_number,
            payment_intent_id=self.state.paid_payment_intent_id,
            attempts=self.state.attempt,
            decline_code=self.state.last_decline_code if status == "unpaid" else None,
        )

    async def _hand_over(self, step: str, request: EmailRequest) -> None:
        """Start the message's own delivery workflow (not awaited: a dead letter must not hold the cycle)."""
        await hand_off_email(self.saga, step, request)

    def _email(self, purpose: str, subject: str, body: str) -> EmailRequest:
        p = self.params
        return EmailRequest(
            message_id=email_message_id(workflow.info().workflow_id, purpose),
            template="billing_notice",  # to the tenant's billing email, resolved when sent
            tenant_id=p.tenant_id,
            to_user_id=p.notify_user_id,  # only for a tenant without a billing email
            params={"subject": subject, "body": body},
        )

    async def _tell_parent(self, status: str, next_retry_at: datetime | None = None) -> None:
        """The parent subscription follows the cycle (past_due while dunning); a cycle may also run alone."""
        parent = workflow.info().parent
        if parent is None:
            return
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                SIGNAL_BILLING_CYCLE_STATUS,
                CycleStatusChanged(
                    period_index=self.params.period_index,
                    kind=self.params.kind,
                    status=status,
                    attempt=self.state.attempt,
                    next_retry_at=next_retry_at,
                    amount=self.params.amount,
                    payment_intent_id=self.state.paid_payment_intent_id,
                ),
            )
        except Exception:
            workflow.logger.warning("parent %s did not take the %s signal", parent.workflow_id, status)

    # --- handlers ---

    @workflow.signal(name=SIGNAL_PAYMENT_OUTCOME)
    def payment_outcome(self, outcome: PaymentOutcome) -> None:
        self._record(outcome)

    @workflow.signal(name=SIGNAL_PAYMENT_METHOD_UPDATED)
    def payment_method_updated(self, update: PaymentMethodUpdated) -> None:
        self.state.payment_method = update.payment_method
        self.method_changed = True

    @workflow.query(name=QUERY_BILLING_CYCLE_STATE)
    def cycle_state(self) -> BillingCycleState:
        return self.state

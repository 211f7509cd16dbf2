"""Stand-ins for the billing, subscription and tenant-suspension activities, under the real activity names.

A small Stripe-like world: invoices numbered per tenant (idempotent by workflow id unless voided),
PaymentIntents idempotent by key whose outcome follows Stripe's test PaymentMethod ids, refunds. Every call
is recorded in order with its argument and the workflow time it was scheduled at (a local activity's needs the
worker's `WorkflowClock` interceptor under time skipping). Marking an invoice paid or uncollectible records its
event in the same step, as the real activities do (the events table is the outbox). The hand-over of an email
is the real activity (it starts the email workflow through the worker's client), recorded like the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email_handoff import EmailHandoff
from models import activity_names as act
from models.billing_cycle_contracts import (
    BillingScheduleSpec,
    BillingTriggerInput,
    CreatePaymentIntent,
    CreateSubscription,
    Invoice,
    IssueInvoice,
    MarkInvoicePaid,
    MarkInvoiceUncollectible,
    PaymentIntentInfo,
    PaymentIntentRef,
    RecordDeclinedAttempt,
    Refunded,
    RefundPayment,
    SetSubscriptionStatus,
    SuspendTenant,
    VoidInvoice,
)
from models.contracts import StartEmailDelivery
from models.errors import SUBSCRIPTION_EXISTS
from tests.support.workflow_clock import scheduled_at

VISA = "pm_card_visa"
DECLINED = "pm_card_chargeDeclined"
INSUFFICIENT = "pm_card_chargeDeclinedInsufficientFunds"
PENDING = "pm_test_pending"  # answers `pending`; the outcome comes from a signal or `settle`
DECLINE_CODES = {DECLINED: "card_declined", INSUFFICIENT: "insufficient_funds"}


@dataclass
class FakePaymentIntent:
    id: str
    key: str
    amount: int
    payment_method: str
    invoice_id: str
    status: str
    decline_code: str | None = None
    refunded: int = 0


@dataclass
class FakeBillingWorld:
    fail_step: str | None = None
    calls: list[str] = field(default_factory=list)
    args: dict[str, list] = field(default_factory=dict)
    times: dict[str, list[datetime]] = field(default_factory=dict)
    invoices: dict[str, dict] = field(default_factory=dict)  # invoice id → fields
    invoice_by_workflow: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # tenant → last invoice number
    intents: dict[str, FakePaymentIntent] = field(default_factory=dict)  # idempotency key → intent
    settled: dict[str, str] = field(default_factory=dict)  # pending intent id → status `retrieve` answers
    live_subscriptions: dict = field(default_factory=dict)  # tenant id → its live subscription's id
    events: list[tuple[str, str, dict]] = field(default_factory=list)  # (type, invoice id, payload), the outbox

    def _record(self, name: str, arg) -> None:
        self.calls.append(name)
        self.args.setdefault(name, []).append(arg)
        self.times.setdefault(name, []).append(scheduled_at())
        if name == self.fail_step:
            raise ApplicationError(f"{name} failed on purpose", type="Boom", non_retryable=True)

    def _closed(self, event_type: str, invoice_id: str) -> None:
        invoice = self.invoices[invoice_id]
        paid = event_type == "invoice.paid"
        self.events.append(
            (
                event_type,
                invoice_id,
                {
                    "number": invoice["number"],
                    "amount": invoice["amount"],
                    "payment_intent_id": invoice.get("payment_intent_id") if paid else None,
                    "attempts": invoice.get("attempts", 0),
                },
            )
        )

    # --- views for assertions ---

    def intent(self, pi_id: str) -> FakePaymentIntent:
        return next(i for i in self.intents.values() if i.id == pi_id)

    def succeeded(self) -> list[FakePaymentIntent]:
        return [i for i in self.intents.values() if i.status == "succeeded"]

    def settle(self, pi_id: str, status: str) -> None:
        self.settled[pi_id] = status

    def activities(self) -> list:
        @activity.defn(name=act.ISSUE_INVOICE)
        async def issue_invoice(req: IssueInvoice) -> Invoice:
            self._record(act.ISSUE_INVOICE, req)
            known = self.invoice_by_workflow.get(req.workflow_id)
            if known and self.invoices[known]["status"] != "void":
                inv = self.invoices[known]
                return Invoice(
                    invoice_id=known,
                    number=inv["number"],
                    status=inv["status"],
                    payment_intent_id=inv.get("payment_intent_id"),
                    attempts=inv.get("attempts", 0),
                )
            tenant = str(req.tenant_id)
            self.counters[tenant] = self.counters.get(tenant, 0) + 1
            invoice_id = f"in_{len(self.invoices) + 1}"
            self.invoices[invoice_id] = {
                "number": self.counters[tenant],
                "status": "open",
                "amount": req.amount,
                "kind": req.kind,
                "period_index": req.period_index,
            }
            self.invoice_by_workflow[req.workflow_id] = invoice_id
            return Invoice(invoice_id=invoice_id, number=self.counters[tenant])

        @activity.defn(name=act.VOID_INVOICE)
        async def void_invoice(req: VoidInvoice) -> None:
            self._record(act.VOID_INVOICE, req)
            invoice_id = req.invoice_id or self.invoice_by_workflow.get(req.workflow_id)
            if invoice_id:
                self.invoices[invoice_id]["status"] = "void"

        @activity.defn(name=act.CREATE_PAYMENT_INTENT)
        async def create_payment_intent(req: CreatePaymentIntent) -> PaymentIntentInfo:
            self._record(act.CREATE_PAYMENT_INTENT, req)
            pi = self.intents.get(req.idempotency_key)
            if pi is None:  # an idempotency-key replay answers the first result, as Stripe does
                status = (
                    "pending"
                    if req.payment_method == PENDING
                    else ("failed" if req.payment_method in DECLINE_CODES else "succeeded")
                )
                pi = FakePaymentIntent(
                    id=f"pi_{len(self.intents) + 1}",
                    key=req.idempotency_key,
                    amount=req.amount,
                    payment_method=req.payment_method,
                    invoice_id=req.invoice_id,
                    status=status,
                    decline_code=DECLINE_CODES.get(req.payment_method),
                )
                self.intents[req.idempotency_key] = pi
            return PaymentIntentInfo(payment_intent_id=pi.id, status=pi.status, decline_code=pi.decline_code)

        @activity.defn(name=act.RETRIEVE_PAYMENT_INTENT)
        async def retrieve_payment_intent(req: PaymentIntentRef) -> PaymentIntentInfo:
            self._record(act.RETRIEVE_PAYMENT_INTENT, req)
            pi = self.intent(req.payment_intent_id)
            if pi.status == "pending" and pi.id in self.settled:
                pi.status = self.settled[pi.id]
                pi.decline_code = "card_declined" if pi.status == "failed" else None
            return PaymentIntentInfo(payment_intent_id=pi.id, status=pi.status, decline_code=pi.decline_code)

        @activity.defn(name=act.MARK_INVOICE_PAID)
        async def mark_invoice_paid(req: MarkInvoicePaid) -> None:
            self._record(act.MARK_INVOICE_PAID, req)
            invoice = self.invoices[req.invoice_id]
            if invoice["status"] == "paid" and invoice.get("payment_intent_id") == req.payment_intent_id:
                return
            invoice.update(status="paid", payment_intent_id=req.payment_intent_id, next_retry_at=None)
            if req.attempts is not None:
                invoice["attempts"] = req.attempts
            self._closed("invoice.paid", req.invoice_id)

        @activity.defn(name=act.RECORD_DECLINED_ATTEMPT)
        async def record_declined_attempt(req: RecordDeclinedAttempt) -> None:
            self._record(act.RECORD_DECLINED_ATTEMPT, req)
            self.invoices[req.invoice_id].update(
                attempts=req.attempt,
                decline_code=req.decline_code,
                payment_intent_id=req.payment_intent_id,
                next_retry_at=req.next_retry_at,
            )

        @activity.defn(name=act.MARK_INVOICE_UNCOLLECTIBLE)
        async def mark_invoice_uncollectible(req: MarkInvoiceUncollectible) -> None:
            self._record(act.MARK_INVOICE_UNCOLLECTIBLE, req)
            if self.invoices[req.invoice_id]["status"] != "uncollectible":
                self.invoices[req.invoice_id]["status"] = "uncollectible"
                self._closed("invoice.uncollectible", req.invoice_id)

        @activity.defn(name=act.REFUND_PAYMENT)
        async def refund_payment(req: RefundPayment) -> Refunded:
            self._record(act.REFUND_PAYMENT, req)
            budget = req.amount
            total, ids = 0, []
            for pi_id in req.payment_intent_ids:
                pi = self.intent(pi_id)
                if pi.status == "pending":
                    pi.status = "canceled"
                    continue
                if pi.status != "succeeded":
                    continue
                take = pi.amount - pi.refunded if budget is None else min(budget - total, pi.amount - pi.refunded)
                if take <= 0:
                    continue
                pi.refunded += take
                total += take
                ids.append(f"re_{pi.id}_{pi.refunded}")
            return Refunded(amount=total, refund_ids=ids)

        @activity.defn(name=act.START_EMAIL_DELIVERY)
        async def hand_over_email(req: StartEmailDelivery) -> str:
            self._record(act.START_EMAIL_DELIVERY, req.request)
            return await EmailHandoff().start_delivery(req)

        @activity.defn(name=act.CREATE_SUBSCRIPTION)
        async def create_subscription(req: CreateSubscription) -> None:
            self._record(act.CREATE_SUBSCRIPTION, req)
            if self.live_subscriptions.setdefault(req.tenant_id, req.subscription_id) != req.subscription_id:
                raise ApplicationError(
                    "the tenant already has a live subscription", type=SUBSCRIPTION_EXISTS, non_retryable=True
                )

        @activity.defn(name=act.SET_SUBSCRIPTION_STATUS)
        async def set_subscription_status(req: SetSubscriptionStatus) -> None:
            self._record(act.SET_SUBSCRIPTION_STATUS, req)
            if (
                req.status in ("canceled", "unpaid")
                and self.live_subscriptions.get(req.tenant_id) == req.subscription_id
            ):
                del self.live_subscriptions[req.tenant_id]

        @activity.defn(name=act.SUSPEND_TENANT)
        async def suspend_tenant(req: SuspendTenant) -> None:
            self._record(act.SUSPEND_TENANT, req)

        @activity.defn(name=act.ENSURE_BILLING_SCHEDULE)
        async def ensure_billing_schedule(req: BillingScheduleSpec) -> None:
            self._record(act.ENSURE_BILLING_SCHEDULE, req)

        @activity.defn(name=act.DELETE_BILLING_SCHEDULE)
        async def delete_billing_schedule(req: BillingTriggerInput) -> None:
            self._record(act.DELETE_BILLING_SCHEDULE, req)

        return [
            issue_invoice,
            void_invoice,
            create_payment_intent,
            retrieve_payment_intent,
            mark_invoice_paid,
            record_declined_attempt,
            mark_invoice_uncollectible,
            refund_payment,
            hand_over_email,
            create_subscription,
            set_subscription_status,
            suspend_tenant,
            ensure_billing_schedule,
            delete_billing_schedule,
        ]

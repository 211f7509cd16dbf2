"""Contracts of the subscription and billing-cycle workflows and of the billing activities they call.

One pydantic model in, one out. Amounts are integers in minor units (cents); times are timezone-aware UTC.
No card data anywhere: a payment method is a Stripe PaymentMethod id (`pm_…`).

The plan travels *inside* the subscription's input and the change-plan update (a snapshot resolved from the
catalogue by the API), so workflow code never reads `models/plans.json` and a catalogue edit never changes a
running history.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from models.plans import Plan
from models.retry_policies import WithRetryPolicies

DEFAULT_DUNNING_DAYS = [1, 3, 5, 7]

# --- billing cycle (`billing-{subscription_id}-{period_index}`) ---

BillingCycleKind = Literal["period", "proration"]


class BillingCycleInput(WithRetryPolicies):
    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_id: str
    amount: int = Field(ge=0)
    currency: str
    period_index: int = Field(ge=0)
    period_start: datetime
    period_end: datetime
    payment_method: str
    stripe_customer_id: str
    # receipts and dunning mail go to the tenant's billing email; to this user only when the tenant has none
    notify_user_id: uuid.UUID
    kind: BillingCycleKind = "period"  # "proration": the mid-period charge of an upgrade (no dunning)
    # retries after the first failure, in days counted from that failure; [] = no dunning
    dunning_schedule_days: list[int] = Field(default_factory=lambda: list(DEFAULT_DUNNING_DAYS))
    poll_interval_seconds: int = 300  # polling fallback while waiting for the payment webhook
    payment_timeout_seconds: int = 24 * 3600  # no outcome by then (e.g. stuck in requires_action) = failed attempt
    notify_unpaid: bool = True  # False: a paid sign-up's first charge (its decline unwinds the account: no email)


CycleStatus = Literal["issuing", "charging", "awaiting_payment", "dunning", "paid", "unpaid"]


class BillingCycleState(BaseModel):
    """Returned by the `billing_cycle_state` query."""

    status: CycleStatus = "issuing"
    invoice_id: str | None = None
    invoice_number: int | None = None
    attempt: int = 0
    payment_method: str = ""
    payment_intent_ids: list[str] = Field(default_factory=list)
    paid_payment_intent_id: str | None = None
    last_decline_code: str | None = None
    first_failure_at: datetime | None = None
    next_retry_at: datetime | None = None
    reminders_sent: int = 0


class BillingCycleResult(BaseModel):
    subscription_id: uuid.UUID
    period_index: int
    kind: BillingCycleKind = "period"
    status: Literal["paid", "unpaid"]
    amount: int
    invoice_id: str
    invoice_number: int
    payment_intent_id: str | None = None  # the PaymentIntent that succeeded
    attempts: int
    decline_code: str | None = None  # the last decline, when unpaid


class PaymentOutcome(BaseModel):
    """Signal `payment_outcome`: what the Stripe webhook endpoint learnt, sent to the running cycle named in the
    PaymentIntent's `metadata.workflow_id` (a webhook never starts a cycle: that could charge).

    Duplicates and out-of-order deliveries change nothing: a PaymentIntent that succeeded stays succeeded."""

    payment_intent_id: str
    status: Literal["succeeded", "failed"]
    decline_code: str | None = None
    event_id: str | None = None


class PaymentMethodUpdated(BaseModel):
    """Update `payment_method` to the subscription, which forwards it to an open cycle (signal
    `payment_method_updated`)."""

    payment_method: str


class CycleStatusChanged(BaseModel):
    """Signal `billing_cycle_status` a cycle sends its parent subscription (past_due, paid, unpaid)."""

    period_index: int
    kind: BillingCycleKind = "period"
    status: Literal["past_due", "paid", "unpaid"]
    attempt: int = 0
    next_retry_at: datetime | None = None
    amount: int = 0
    payment_intent_id: str | None = None  # the one that succeeded (paid)


# --- billing activities (activities/billing.py) ---


class IssueInvoice(BaseModel):
    """Idempotent by `workflow_id` (+ kind): a retried issue returns the same invoice and number.

    The per-tenant sequential number is the activity's job (one counter per tenant, in the same transaction)."""

    workflow_id: str
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    plan_id: str
    kind: BillingCycleKind = "period"
    period_index: int
    period_start: datetime
    period_end: datetime
    amount: int
    currency: str
    stripe_customer_id: str


class Invoice(BaseModel):
    invoice_id: str
    number: int  # per tenant, 1, 2, 3, …
    # a cycle run again (a reset, a re-run days later) finds its invoice already paid: nothing to charge
    status: Literal["open", "paid", "uncollectible"] = "open"
    payment_intent_id: str | None = None
    attempts: int = 0  # charge attempts recorded on it (a paid one: those it took)


class VoidInvoice(BaseModel):
    """Compensation of issue_invoice; tolerates an invoice that was never created (found by workflow_id)."""

    workflow_id: str
    tenant_id: uuid.UUID
    invoice_id: str | None = None
    reason: str


class CreatePaymentIntent(BaseModel):
    """Create and confirm (off-session) a PaymentIntent for an invoice. The idempotency key is
    `{workflow_id}:pi:{attempt}`: a retried activity never charges twice; a dunning retry is a new attempt."""

    idempotency_key: str
    invoice_id: str
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    workflow_id: str  # goes into the PaymentIntent's metadata: the webhook endpoint routes events by it
    amount: int
    currency: str
    stripe_customer_id: str
    payment_method: str


PaymentIntentStatus = Literal["succeeded", "failed", "pending"]  # pending: processing / requires_action


class PaymentIntentRef(BaseModel):
    payment_intent_id: str


class PaymentIntentInfo(BaseModel):
    """A decline is an answer, not an activity failure: status "failed" with Stripe's decline code."""

    payment_intent_id: str
    status: PaymentIntentStatus
    decline_code: str | None = None
    # when the answer came (the worker's clock): a local activity's answer comes later than the workflow task's
    # `workflow.now()`, and dunning counts its days from the decline itself
    answered_at: datetime | None = None


class MarkInvoicePaid(BaseModel):
    """Marks the invoice paid (idempotent: already paid by this intent is fine)."""

    invoice_id: str
    tenant_id: uuid.UUID
    payment_intent_id: str
    workflow_id: str
    attempts: int | None = None  # charge attempts it took; None leaves the invoice's count as it is


# The "PaymentIntent id" of an attempt Stripe refused before creating one (e.g. an unknown card).
REFUSED_PAYMENT_PREFIX = "refused:"


class RecordDeclinedAttempt(BaseModel):
    """A charge attempt of an open invoice failed: the invoice shows why (the API reads it while dunning).

    Idempotent by `attempt`: recording the same attempt again changes nothing."""

    invoice_id: str
    tenant_id: uuid.UUID
    workflow_id: str
    attempt: int
    payment_intent_id: str  # may start with REFUSED_PAYMENT_PREFIX: no PaymentIntent exists
    decline_code: str | None = None
    next_retry_at: datetime | None = None  # None: no retry is left (the invoice becomes uncollectible)


class MarkInvoiceUncollectible(BaseModel):
    invoice_id: str
    tenant_id: uuid.UUID
    workflow_id: str
    decline_code: str | None = None


class RefundPayment(BaseModel):
    """Refund the PaymentIntents among `payment_intent_ids` that succeeded (none succeeded → nothing to do) and
    cancel those still waiting for an outcome.

    `amount` None refunds in full; otherwise at most `amount` in total, taken from the listed intents in order.
    Idempotent by `idempotency_key` (one refund per key and intent)."""

    idempotency_key: str
    tenant_id: uuid.UUID
    payment_intent_ids: list[str]
    amount: int | None = None
    reason: str


class Refunded(BaseModel):
    amount: int  # what was actually refunded in total (0 when nothing had succeeded)
    refund_ids: list[str] = Field(default_factory=list)


# --- subscription (`subscription-{subscription_id}`) ---

SubscriptionStatus = Literal["incomplete", "trialing", "active", "past_due", "unpaid", "canceled"]
CycleDriver = Literal["timer", "schedule"]


class PeriodPayment(BaseModel):
    payment_intent_id: str
    amount: int
    covers_from: datetime | None = None  # a proration charge covers from the upgrade on; None: the whole period


class SubscriptionState(BaseModel):
    """Everything the subscription knows; the `subscription_state` query and the continue-as-new carry."""

    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    status: SubscriptionStatus = "incomplete"  # until a trial starts or the first period is paid
    plan: Plan
    pending_plan: Plan | None = None  # a downgrade, applied at the period end
    payment_method: str
    stripe_customer_id: str
    notify_user_id: uuid.UUID
    trial_end: datetime | None = None
    # calendar anchor: period k runs from advance(anchor, k - anchor_index) to advance(anchor, k - anchor_index + 1)
    anchor: datetime | None = None
    anchor_index: int = 0
    period_index: int = -1  # the current (last started) period; -1 before the first
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    paid_through: datetime | None = None
    period_payments: list[PeriodPayment] = Field(default_factory=list)  # charges for the current period
    cycles_paid: int = 0
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    refunded_amount: int = 0  # the prorated refund of a cancel now
    last_proration_amount: int | None = None
    prorations: int = 0  # proration charges made so far (their cycle ids count them)
    reruns: int = 0  # cycles an operator asked to run again after a failure
    plan_changed_at: datetime | None = None
    notes: list[str] = Field(default_factory=list)  # the last few ignored or deferred requests, for operators
    schedule_ready: bool = False  # cycle_driver "schedule": its Temporal Schedule exists


class SubscriptionInput(WithRetryPolicies):
    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    plan: Plan
    payment_method: str
    stripe_customer_id: str
    notify_user_id: uuid.UUID
    dunning_schedule_days: list[int] = Field(default_factory=lambda: list(DEFAULT_DUNNING_DAYS))
    poll_interval_seconds: int = 300
    # "timer": the workflow starts each cycle at the period end itself; "schedule": it waits for the
    # `start_cycle` signal a Temporal Schedule sends (and ignores it before the period is due).
    cycle_driver: CycleDriver = "timer"
    state: SubscriptionState | None = None  # set only by continue-as-new


class SubscriptionResult(BaseModel):
    subscription_id: uuid.UUID
    status: Literal["unpaid", "canceled"]
    cycles_paid: int
    refunded_amount: int = 0


class CreateSubscription(BaseModel):
    """The subscription's first step: its row, `incomplete`; `SubscriptionExists` if the tenant has a live one."""

    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_id: str
    payment_method: str
    workflow_id: str
    created_by: uuid.UUID | None = None


class CancelSubscription(BaseModel):
    at_period_end: bool = True
    reason: str | None = None


class ChangePlan(BaseModel):
    plan: Plan  # resolved from the catalogue by the API


class StartCycle(BaseModel):
    """Signal `start_cycle` (the Schedule's action, or an operator): bill the next period if it is due."""

    requested_by: str = "schedule"


class SetSubscriptionStatus(BaseModel):
    """Read model update (subscriptions table + domain event); idempotent."""

    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    status: SubscriptionStatus
    plan_id: str
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    payment_method: str | None = None
    workflow_id: str


class SuspendTenant(BaseModel):
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    reason: str
    workflow_id: str


# --- the Temporal Schedule of a subscription (activities/schedules.py, workflows/billing_trigger.py) ---


class BillingScheduleSpec(BaseModel):
    """Fires at every period boundary of `plan` counted from `anchor` (UTC)."""

    subscription_id: uuid.UUID
    tenant_id: uuid.UUID
    plan: Plan
    anchor: datetime


class BillingTriggerInput(BaseModel):
    subscription_id: uuid.UUID

"""Contracts of the paid sign-up saga (`signup-{user_id}`): user + tenant + first payment in one parent workflow.

The password arrives only as an argon2 hash computed by the API; the plan is a snapshot of the catalogue entry
resolved by the API, so a catalogue edit never changes a running history. Card data never: a PaymentMethod id.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from models.billing_cycle_contracts import DEFAULT_DUNNING_DAYS
from models.plans import Plan
from models.retry_policies import WithRetryPolicies


class PaidSignupInput(WithRetryPolicies):
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    email: str
    password_hash: str  # argon2id, computed by the API before the workflow starts
    display_name: str | None = None
    tenant_name: str
    slug: str
    plan: Plan
    payment_method: str  # a Stripe PaymentMethod id (`pm_…`)
    verification_timeout_seconds: int = 24 * 3600
    # The first charge: a sign-up is not dunned, and one whose payment has no outcome by then is declined.
    payment_timeout_seconds: int = 3600
    poll_interval_seconds: int = 60
    # the subscription that follows: BILLING_DUNNING_DAYS and BILLING_POLL_SECONDS, as for any other
    dunning_schedule_days: list[int] = Field(default_factory=lambda: list(DEFAULT_DUNNING_DAYS))
    subscription_poll_seconds: int = 300


class RegistrationProgress(BaseModel):
    """Signal `registration_progress` a child registration sends its parent: the pending user row exists
    (so a tenant membership may reference it), or the registration was refused (email taken)."""

    user_id: uuid.UUID
    status: Literal["user_created", "rejected"]
    error_type: str | None = None


SignupStatus = Literal["pending", "active", "declined", "rejected", "failed"]


class SignupOutcome(BaseModel):
    """Answer of the `outcome` update (and the `signup_outcome` query, `pending` until decided).

    active: paid (or in trial), subscription started — the user still verifies their email to log in.
    declined: the first payment was declined; everything was unwound. rejected: the email or the slug is
    taken; nothing remains. failed: another failure (or a cancellation); everything was unwound."""

    status: SignupStatus
    workflow_id: str
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    subscription_status: Literal["active", "trialing"] | None = None
    error_type: str | None = None  # EmailAlreadyRegistered, SlugTaken, PaymentDeclined, SignupFailed
    reason: str | None = None  # short and log-safe: no PII
    decline_code: str | None = None


class DiscardTenant(BaseModel):
    """Activity `tenants.discard_tenant` (paid sign-up unwinding): delete the tenant row and everything that
    cascades from it (membership, billing config, settings, invoices, subscriptions, …). Tolerates a tenant
    that was never created or is already gone. The Stripe customer is deleted before, by its own step."""

    tenant_id: uuid.UUID
    workflow_id: str
    reason: str  # short and log-safe (the saga's error, no PII)

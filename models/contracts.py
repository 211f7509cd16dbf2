"""Pydantic contracts that cross the workflow boundary: one model in, one model out.

Adding an optional field never breaks a running workflow; renaming or removing one does.
No passwords (only argon2 hashes) and no tokens (only token ids) ever appear here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from models.retry_policies import WithRetryPolicies

SagaStatusValue = Literal[
    "running",  # forward steps in progress
    "waiting",  # parked on a durable timer / external event (e.g. email verification)
    "completed",  # all forward steps done
    "compensating",  # running compensations in reverse
    "compensated",  # a step failed or the saga was cancelled; compensations all done
    "expired",  # the saga's deadline passed; compensations all done
    "awaiting_operator",  # a compensation keeps failing; waits for an operator's retry or skip
    "failed",  # ended with an error that needed no compensation
]


class CompensationRecord(BaseModel):
    step: str
    # pending: registered, would run on failure; not_needed: the saga completed, so it never will
    status: Literal["pending", "running", "done", "failed", "skipped", "not_needed"] = "pending"
    attempts: int = 0  # how many times the compensation was started (each start has its own retries)
    error: str | None = None


class SagaState(BaseModel):
    """What a saga is doing; returned by the `saga_state` query of every saga workflow."""

    saga: str
    status: SagaStatusValue = "running"
    step: str = "starting"
    completed_steps: list[str] = Field(default_factory=list)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    waiting_for: str | None = None
    error: str | None = None
    updated_at: datetime | None = None
    pivot: str | None = None  # the step after which the saga no longer unwinds, once passed


class OperatorDecision(BaseModel):
    """Signal payload an operator sends to a saga parked in `awaiting_operator`."""

    action: Literal["retry", "skip"]
    reason: str | None = None


# --- registration saga ---


class RegistrationInput(WithRetryPolicies):
    user_id: uuid.UUID
    email: str
    display_name: str | None = None
    password_hash: str  # argon2id, computed by the API before the workflow starts
    verification_timeout_seconds: int = 24 * 3600
    # Started by a paid sign-up: the verification email waits for the parent's `send_verification_email`
    # signal (its first payment succeeded), so a declined sign-up never emailed anyone.
    hold_verification_email: bool = False


class RegistrationAccepted(BaseModel):
    """Answer of the registration's `accepted` update: the pending user exists (or the email was taken)."""

    user_id: uuid.UUID
    status: str


class VerifyEmail(BaseModel):
    token_id: uuid.UUID


class RegistrationResult(BaseModel):
    user_id: uuid.UUID
    status: Literal["verified", "expired"]


# --- activity contracts ---


class CreatePendingUser(BaseModel):
    user_id: uuid.UUID
    email: str
    display_name: str | None = None
    password_hash: str
    workflow_id: str


class UserRef(BaseModel):
    user_id: uuid.UUID
    workflow_id: str | None = None


class IssueVerificationToken(BaseModel):
    user_id: uuid.UUID
    token_id: uuid.UUID
    expires_at: datetime


class TokenRef(BaseModel):
    token_id: uuid.UUID


class ActivateUser(BaseModel):
    user_id: uuid.UUID
    token_id: uuid.UUID
    workflow_id: str


# --- email change saga ---


class EmailChangeInput(WithRetryPolicies):
    change_id: uuid.UUID
    user_id: uuid.UUID
    new_email: str
    verification_timeout_seconds: int = 24 * 3600


class EmailChangeAccepted(BaseModel):
    """Answer of the email change's `accepted` update: the new address is reserved (or it was taken)."""

    change_id: uuid.UUID
    status: str


class EmailChangeResult(BaseModel):
    change_id: uuid.UUID
    status: Literal["changed", "expired"]


class ReserveEmailChange(BaseModel):
    change_id: uuid.UUID
    user_id: uuid.UUID
    new_email: str
    token_id: uuid.UUID
    workflow_id: str


class EmailChangeToken(BaseModel):
    change_id: uuid.UUID
    user_id: uuid.UUID
    token_id: uuid.UUID
    expires_at: datetime


class ReleaseEmailChange(BaseModel):
    change_id: uuid.UUID
    user_id: uuid.UUID
    reason: Literal["expired", "cancelled"]
    workflow_id: str


class SwapEmail(BaseModel):
    change_id: uuid.UUID
    user_id: uuid.UUID
    token_id: uuid.UUID
    workflow_id: str


# --- tenant provisioning saga ---


class TenantProvisioningInput(WithRetryPolicies):
    tenant_id: uuid.UUID
    name: str
    slug: str
    owner_user_id: uuid.UUID
    billing_email: str | None = None
    currency: str = "eur"
    # False when a paid sign-up provisions the tenant: it sends the welcome email itself, after its pivot.
    send_welcome_email: bool = True


class TenantAccepted(BaseModel):
    """Answer of the provisioning saga's `accepted` update: the tenant row exists (or the slug was taken)."""

    tenant_id: uuid.UUID
    status: str


class TenantProvisioningResult(BaseModel):
    tenant_id: uuid.UUID
    status: Literal["active"]
    stripe_customer_id: str


class CreateTenant(BaseModel):
    tenant_id: uuid.UUID
    name: str
    slug: str
    created_by: uuid.UUID
    workflow_id: str


class MarkTenantFailed(BaseModel):
    tenant_id: uuid.UUID
    reason: str
    workflow_id: str


class TenantRef(BaseModel):
    tenant_id: uuid.UUID
    workflow_id: str | None = None


class MembershipRef(BaseModel):
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: Literal["owner", "admin", "member"] = "member"


class CreateBillingConfig(BaseModel):
    tenant_id: uuid.UUID
    stripe_customer_id: str
    currency: str
    billing_email: str | None = None


# --- invitation saga ---


class InvitationInput(WithRetryPolicies):
    invitation_id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    role: Literal["admin", "member"]
    invited_by: uuid.UUID
    expires_in_seconds: int = 7 * 24 * 3600


class IssueInvitation(BaseModel):
    invitation_id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    role: str
    invited_by: uuid.UUID
    expires_at: datetime


class AcceptInvitation(BaseModel):
    """Signal: the API checked the token and that the caller's verified email matches."""

    user_id: uuid.UUID


class CompleteInvitation(BaseModel):
    invitation_id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    workflow_id: str


class CloseInvitation(BaseModel):
    invitation_id: uuid.UUID
    tenant_id: uuid.UUID
    status: Literal["revoked", "expired"]


class InvitationResult(BaseModel):
    invitation_id: uuid.UUID
    status: Literal["accepted", "revoked", "expired"]
    user_id: uuid.UUID | None = None


# --- email delivery (one workflow per message) ---

EmailTemplate = Literal[
    "verify_email", "welcome", "invitation", "notice", "billing_notice", "verify_new_email", "email_changed"
]
EmailState = Literal["queued", "sending", "deferred", "sent", "failed", "dead_lettered", "discarded", "suppressed"]


class EmailRequest(BaseModel):
    """What to send; never the text itself when it carries a secret: the send step renders it from ids.

    `to_user_id` or `to_address` names the recipient (invitations resolve their own address, billing notices
    the tenant's billing email). `params` hold ids and plain values only (token_id, invitation_id, subject/body
    of a notice).
    """

    message_id: uuid.UUID
    template: EmailTemplate
    tenant_id: uuid.UUID | None = None
    to_user_id: uuid.UUID | None = None
    to_address: str | None = None
    params: dict[str, str] = Field(default_factory=dict)


class StartEmailDelivery(BaseModel):
    """An email handed to the delivery pipeline by a local activity (not a child workflow): what `EmailDelivery`
    is started with, and the `TenantId` and summary its execution carries."""

    request: EmailRequest
    tenant_id: str | None = None  # the TenantId search attribute, when the sender belongs to a tenant
    summary: str


class EmailPolicy(BaseModel):
    """Retry policy for temporary failures; read from settings by a local activity, so it lands in history."""

    initial_interval_seconds: float = 5.0
    backoff_coefficient: float = 2.0
    maximum_interval_seconds: float = 600.0
    maximum_attempts: int = 8
    send_timeout_seconds: float = 30.0


class EmailQueued(BaseModel):
    message_id: uuid.UUID
    to_address: str
    policy: EmailPolicy  # the send's retry policy, read from the worker's settings with the message's row
    suppressed: bool = False


class SendEmail(BaseModel):
    request: EmailRequest
    to_address: str  # the resolved (or operator-corrected) recipient


class EmailDelivery(BaseModel):
    message_id: uuid.UUID
    state: str
    reply: str | None = None


class EmailDecision(BaseModel):
    """An operator's answer to a dead letter: send again (optionally to a corrected address) or give up."""

    action: Literal["retry", "discard"]
    to_address: str | None = None
    reason: str | None = None


class EmailResult(BaseModel):
    message_id: uuid.UUID
    state: Literal["sent", "discarded", "suppressed"]
    attempts: int = 0


class MarkEmail(BaseModel):
    message_id: uuid.UUID
    tenant_id: uuid.UUID | None = None
    state: EmailState
    reply: str | None = None
    to_address: str | None = None  # set when an operator corrected the address


class SuppressAddress(BaseModel):
    tenant_id: uuid.UUID | None = None
    address: str
    reason: str
    message_id: uuid.UUID


# --- outbound webhooks (workflows/webhook_delivery.py) ---


class WebhookEvent(BaseModel):
    """What a receiver gets as the JSON body: the event, with the id and time it needs to order and dedupe."""

    id: uuid.UUID
    type: str
    version: int
    occurred_at: datetime
    tenant_id: uuid.UUID
    aggregate_type: str
    aggregate_id: str
    payload: dict = Field(default_factory=dict)

    def body(self) -> dict:
        return {
            "id": str(self.id),
            "type": self.type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "tenant_id": str(self.tenant_id),
            "aggregate": {"type": self.aggregate_type, "id": self.aggregate_id},
            "payload": self.payload,
        }


class WebhookDeliveryInput(BaseModel):
    """No URL and no secret: the attempt reads both from the endpoint's row, so history never holds them."""

    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    tenant_id: uuid.UUID
    event: WebhookEvent


class WebhookPolicy(BaseModel):
    """Read from settings by a local activity, so it lands in history and replays the same."""

    schedule_seconds: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    timeout_seconds: float = 15.0
    disable_after_seconds: float = 5 * 24 * 3600.0


class WebhookAttempt(BaseModel):
    delivery: WebhookDeliveryInput
    attempt: int  # 1-based, counted over the delivery's whole life (operator retries included)
    disable_after_seconds: float


WebhookOutcome = Literal["delivered", "failed", "refused", "endpoint_gone", "endpoint_disabled"]


class WebhookAttemptResult(BaseModel):
    outcome: WebhookOutcome
    status_code: int | None = None
    error: str | None = None
    disable: bool = False  # the endpoint has failed every attempt for WEBHOOK_DISABLE_AFTER


WebhookDeliveryStatus = Literal["pending", "retrying", "delivered", "dead_lettered", "failed", "discarded"]


class MarkWebhookDelivery(BaseModel):
    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    status: WebhookDeliveryStatus
    next_attempt_at: datetime | None = None
    error: str | None = None


class DisableWebhookEndpoint(BaseModel):
    endpoint_id: uuid.UUID
    tenant_id: uuid.UUID
    reason: str


class DisabledWebhookEndpoint(BaseModel):
    disabled: bool  # false: it was already disabled (or gone), nobody to tell again
    owner_ids: list[uuid.UUID] = Field(default_factory=list)
    url_host: str | None = None


class WebhookDecision(BaseModel):
    """A dead letter's answer: attempt again (the whole schedule) or give up."""

    action: Literal["retry", "discard"]
    reason: str | None = None


class WebhookDeliveryResult(BaseModel):
    delivery_id: uuid.UUID
    status: WebhookDeliveryStatus
    attempts: int = 0

"""Every domain event type the code records: its schema version, payload schema and meaning.

One entry per (type, version). `record_event(...)` callers must use a type listed here (a unit test parses the
source to check it); a payload change that breaks consumers is a new version, listed beside the old one.
Consumers call `schema_for(type, version)`, which raises `UnknownEvent` for anything not listed: what to do
then (reject, park, upcast) is each consumer's explicit decision.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Empty(Payload):
    pass


# --- users ---
class UserRegistered(Payload):
    status: str = Field(description="`pending` until the address is verified")
    email: str | None = Field(None, description="the address registered (the user profile read model shows it)")
    display_name: str | None = None


class UserLoggedIn(Payload):
    session_id: str


class PlatformAdminChanged(Payload):
    via: str = Field(description="what made the change, e.g. `prognet admin`")


class UserSession(Payload):
    session_id: str


class LoginFailed(Payload):
    reason: Literal["wrong_password", "not_verified", "disabled", "wrong_current_password"]


class LoginLocked(Payload):
    retry_after_seconds: int = Field(description="how long this client must wait before the next attempt")


class SessionFamilyRevoked(Payload):
    session_id: str
    reason: str = Field(description="`refresh_token_reused`: an already rotated refresh token came back")


class NameChange(Payload):
    old: str | None
    new: str | None


class ProfileChanges(Payload):
    display_name: NameChange | None = None


class ProfileUpdated(Payload):
    changes: ProfileChanges = Field(description="each changed field's old and new value")


class PasswordChanged(Payload):
    sessions_revoked: int = Field(description="how many other sessions of the user were ended")


class EmailChangeRef(Payload):
    change_id: uuid.UUID


class EmailChanged(Payload):
    change_id: uuid.UUID
    email: str = Field(description="the account's new address")


class EmailChangeRequested(Payload):
    change_id: uuid.UUID
    superseded: list[uuid.UUID] = Field(description="pending changes of the user this one replaced")


# --- tenants and members ---
class TenantCreated(Payload):
    slug: str
    name: str | None = None
    created_by: uuid.UUID | None = None


class TenantBillingConfigured(Payload):
    stripe_customer_id: str
    currency: str
    billing_email: str | None = Field(None, description="where the tenant's invoices and receipts go")


class TenantWithReason(Payload):
    reason: str


class TenantSuspended(Payload):
    subscription_id: uuid.UUID
    reason: str


class TenantReactivated(Payload):
    subscription_id: uuid.UUID


class MemberAdded(Payload):
    role: str


class MemberRoleChanged(Payload):
    user_id: uuid.UUID
    from_: str = Field(alias="from")
    to: str
    by: uuid.UUID


class MemberRemoved(Payload):
    user_id: uuid.UUID
    role: str
    by: uuid.UUID
    left: bool = Field(description="true when the member removed themself")


# --- invitations ---
class InvitationCreated(Payload):
    role: str


class InvitationAccepted(Payload):
    user_id: uuid.UUID
    role: str


# --- billing ---
class SubscriptionChanged(Payload):
    plan_id: str


class InvoiceIssued(Payload):
    number: int
    amount: int = Field(description="minor units (cents)")
    currency: str
    kind: str
    subscription_id: uuid.UUID
    period_index: int


class InvoiceVoided(Payload):
    number: int
    reason: str | None


class InvoicePaymentFailed(Payload):
    number: int
    attempt: int
    decline_code: str | None
    payment_intent_id: str | None
    next_retry_at: str | None = Field(description="ISO 8601; null when no retry follows")


class InvoiceClosed(Payload):
    number: int
    amount: int = Field(description="minor units (cents)")
    currency: str
    subscription_id: uuid.UUID
    payment_intent_id: str | None
    attempts: int


# --- emails (platform operators) ---
class EmailRetryRequested(Payload):
    by: uuid.UUID
    address_corrected: bool
    reason: str | None


class EmailDiscardRequested(Payload):
    by: uuid.UUID
    reason: str | None


class SuppressionLifted(Payload):
    by: uuid.UUID
    message_id: uuid.UUID | None


# --- outbound webhooks (tenant owners and admins) ---
class WebhookEndpointChanged(Payload):
    host: str = Field(description="the URL's host only: a URL's path or query may carry the receiver's token")
    enabled: bool
    event_types: list[str] | None = Field(description="exact types or `prefix.*`; null: every type")


class WebhookSecretRotated(Payload):
    old_key_signs_until: str = Field(description="ISO 8601: the old secret signs beside the new one until then")


class WebhookEndpointDisabled(Payload):
    reason: str
    failing_since: str = Field(description="ISO 8601: the first failed attempt since the last delivered one")


# --- platform: external services (no tenant, no user)
class CircuitChanged(Payload):
    circuit: str = Field(description="`stripe`, `smtp`, `webhook:<host>`")
    open_until: str | None = Field(None, description="ISO 8601 end of the cool-down (opened only)")


PayloadModel = type[Payload]


@dataclass(frozen=True)
class EventSpec:
    type: str
    version: int
    aggregate: str
    payload: PayloadModel
    description: str


def _spec(type: str, aggregate: str, payload: type[Payload], description: str, version: int = 1) -> EventSpec:
    return EventSpec(type, version, aggregate, payload, description)


_SUBSCRIPTION_STATUSES = ("incomplete", "trialing", "active", "past_due", "unpaid", "canceled")

SPECS: tuple[EventSpec, ...] = (
    _spec("user.registered", "user", UserRegistered, "A registration created a pending user."),
    _spec("user.verified", "user", Empty, "The user verified their email address; the account is active."),
    _spec("user.registration_expired", "user", Empty, "A pending registration was never verified and was removed."),
    _spec("user.logged_in", "user", UserLoggedIn, "A login opened a session."),
    _spec("user.logged_out", "user", UserSession, "The user ended a session (logout)."),
    _spec("user.login_failed", "user", LoginFailed, "A login, or a check of the current password, failed."),
    _spec("user.login_locked", "user", LoginLocked, "Failed logins throttled the account (once per lock)."),
    _spec("user.session_family_revoked", "user", SessionFamilyRevoked, "A reused refresh token ended its session."),
    _spec("user.profile_updated", "user", ProfileUpdated, "The user changed their profile (display name)."),
    _spec("user.password_changed", "user", PasswordChanged, "The user changed their password; other sessions ended."),
    _spec("user.email_change_requested", "user", EmailChangeRequested, "An email change reserved its new address."),
    _spec("user.email_changed", "user", EmailChanged, "The new address was verified and is now the account's."),
    _spec("user.email_change_expired", "user", EmailChangeRef, "An email change was not verified in time."),
    _spec("user.email_change_cancelled", "user", EmailChangeRef, "An email change was cancelled or failed."),
    _spec("user.platform_admin_granted", "user", PlatformAdminChanged, "The user became a platform operator."),
    _spec("user.platform_admin_revoked", "user", PlatformAdminChanged, "The user is no longer a platform operator."),
    _spec("tenant.created", "tenant", TenantCreated, "Tenant provisioning started: the tenant row exists."),
    _spec("tenant.provisioned", "tenant", Empty, "Tenant provisioning finished: the tenant is active."),
    _spec("tenant.failed", "tenant", TenantWithReason, "Tenant provisioning failed and was unwound."),
    _spec("tenant.discarded", "tenant", TenantWithReason, "A paid sign-up was unwound: the tenant is gone."),
    _spec("tenant.billing_configured", "tenant", TenantBillingConfigured, "The tenant's billing is set up."),
    _spec("tenant.suspended", "tenant", TenantSuspended, "An unpaid subscription suspended the tenant."),
    _spec("tenant.reactivated", "tenant", TenantReactivated, "A paid subscription brought a suspended tenant back."),
    _spec("member.added", "membership", MemberAdded, "A user joined the tenant (aggregate id: the user)."),
    _spec("member.role_changed", "tenant", MemberRoleChanged, "An owner or admin changed a member's role."),
    _spec("member.removed", "tenant", MemberRemoved, "A member was removed, or left."),
    _spec("invitation.created", "invitation", InvitationCreated, "An invitation to join the tenant was sent."),
    _spec("invitation.accepted", "invitation", InvitationAccepted, "The invitee accepted and became a member."),
    _spec("invitation.revoked", "invitation", Empty, "The invitation was revoked before it was accepted."),
    _spec("invitation.expired", "invitation", Empty, "The invitation timed out unanswered."),
    *(
        _spec(f"subscription.{status}", "subscription", SubscriptionChanged, f"The subscription is now `{status}`.")
        for status in _SUBSCRIPTION_STATUSES
    ),
    _spec("invoice.issued", "invoice", InvoiceIssued, "A billing cycle issued an invoice."),
    _spec("invoice.voided", "invoice", InvoiceVoided, "An issued invoice was voided (its cycle unwound)."),
    _spec("invoice.payment_failed", "invoice", InvoicePaymentFailed, "A charge of the invoice was declined."),
    _spec("invoice.paid", "invoice", InvoiceClosed, "The invoice was paid; the cycle is over."),
    _spec("invoice.uncollectible", "invoice", InvoiceClosed, "Dunning gave up: the invoice is uncollectible."),
    _spec("email.dead_lettered", "email", Empty, "An email became a dead letter, waiting for an operator."),
    _spec("email.retry_requested", "email", EmailRetryRequested, "An operator retried a dead-lettered email."),
    _spec("email.discard_requested", "email", EmailDiscardRequested, "An operator discarded a dead-lettered email."),
    _spec("webhook_endpoint.created", "webhook_endpoint", WebhookEndpointChanged, "A webhook endpoint was added."),
    _spec("webhook_endpoint.updated", "webhook_endpoint", WebhookEndpointChanged, "A webhook endpoint was changed."),
    _spec("webhook_endpoint.deleted", "webhook_endpoint", Empty, "A webhook endpoint was removed."),
    _spec(
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint",
        WebhookSecretRotated,
        "The endpoint's signing secret was replaced; the old one signs alongside for a while.",
    ),
    _spec(
        "webhook_endpoint.disabled",
        "webhook_endpoint",
        WebhookEndpointDisabled,
        "Every delivery to the endpoint failed for too long: it was disabled (its owners are emailed).",
    ),
    _spec("circuit.opened", "circuit", CircuitChanged, "An external service looks down: its calls fail fast."),
    _spec("circuit.closed", "circuit", CircuitChanged, "A probe call succeeded: the service is back."),
    _spec("email.suppression_lifted", "email_suppression", SuppressionLifted, "An operator lifted a suppression."),
)

CATALOGUE: dict[tuple[str, int], EventSpec] = {(s.type, s.version): s for s in SPECS}


class UnknownEvent(LookupError):
    """An event type, or a version of it, this code does not know."""


def schema_for(type: str, version: int) -> type[Payload]:
    spec = CATALOGUE.get((type, version))
    if spec is not None:
        return spec.payload
    known = sorted(v for t, v in CATALOGUE if t == type)
    if known:
        raise UnknownEvent(f"unknown version {version} of event type {type!r} (known: {known})")
    raise UnknownEvent(f"unknown event type {type!r}")


def parse_payload(type: str, version: int, payload: dict[str, Any]) -> Payload:
    return schema_for(type, version).model_validate(payload)


def markdown() -> str:
    """The catalogue as a Markdown table (the README's event reference)."""
    lines = ["| type | version | aggregate | payload | meaning |", "|---|---|---|---|---|"]
    for spec in sorted(SPECS, key=lambda s: (s.type, s.version)):
        lines.append(
            f"| `{spec.type}` | {spec.version} | {spec.aggregate} | {_fields(spec.payload)} | {spec.description} |"
        )
    return "\n".join(lines)


def _fields(model: type[Payload]) -> str:
    """`name`: type pairs; `T?` marks a value that may be null (a `|` would split the Markdown table)."""
    if not model.model_fields:
        return "—"
    return ", ".join(
        f"`{field.alias or name}`: {_type_name(field.annotation)}" for name, field in model.model_fields.items()
    )


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in get_args(annotation):
        return _type_name(args[0]) + "?"
    return {uuid.UUID: "uuid"}.get(annotation, getattr(annotation, "__name__", str(annotation)))

"""Request and response bodies of the HTTP API. Requests forbid unknown fields."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, SecretStr, StringConstraints
from pydantic.config import JsonDict

from models.contracts import SagaState

PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 1024

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"  # names end up in email subjects and headers


def _encodable(password: SecretStr) -> SecretStr:
    """JSON can carry lone surrogates ("\\ud800"), which cannot be hashed: refuse them as bad input."""
    try:
        password.get_secret_value().encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("password must be valid Unicode text") from None
    return password


Password = Annotated[
    SecretStr,
    Field(
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
        description=f"{PASSWORD_MIN_LENGTH}–{PASSWORD_MAX_LENGTH} characters.",
    ),
    AfterValidator(_encodable),
]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)
]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "ada@example.com", "password": "correct horse battery staple", "display_name": "Ada"},
            ]
        },
    )
    email: EmailStr
    password: Password
    display_name: DisplayName | None = None


class VerifyRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"token": "Zk9vYmFyYmF6cXV4LXZlcmlmaWNhdGlvbi10b2tlbg"},
            ]
        },
    )
    token: OpaqueToken


class LoginRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "ada@example.com", "password": "correct horse battery staple"},
            ]
        },
    )
    email: EmailStr
    password: Password


class RefreshRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"refresh_token": "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b.q1w2e3r4t5y6u7i8o9p0"},
            ]
        },
    )
    refresh_token: OpaqueToken


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")


class RegistrationLinks(BaseModel):
    self: str
    verify: str


class RegistrationAcceptedResponse(BaseModel):
    user_id: uuid.UUID
    workflow_id: str
    status: str
    links: RegistrationLinks


class VerifyResponse(BaseModel):
    user_id: uuid.UUID
    status: Literal["verified", "verifying"]


class MembershipSummary(BaseModel):
    tenant_id: uuid.UUID
    role: str
    joined_at: datetime


class MeResponse(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str | None
    status: str
    created_at: datetime
    verified_at: datetime | None
    last_login_at: datetime | None = None
    memberships: list[MembershipSummary] = Field(default_factory=list, description="Your tenants and your role.")


class WorkflowView(BaseModel):
    workflow_id: str
    type: str
    status: str = Field(description="Temporal execution status, lower case: running, completed, failed, …")
    started_at: datetime | None
    closed_at: datetime | None
    saga: SagaState | None = Field(description="The saga's own state (query `saga_state`); null if unavailable.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, Literal["ok", "down"]]


# --- tenants, members, invitations ---------------------------------------------------------------------------

Role = Literal["owner", "admin", "member"]
InvitableRole = Literal["admin", "member"]
TenantStatus = Literal["provisioning", "active", "failed", "suspended"]  # suspended: a subscription went unpaid
InvitationStatus = Literal["pending", "accepted", "revoked", "expired"]

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$"
Slug = Annotated[
    str,
    Field(
        pattern=SLUG_PATTERN,
        min_length=3,
        max_length=40,
        examples=["acme-labs"],
        description="3–40 characters: lowercase letters, digits and '-', not starting or ending with '-'. "
        "Unique across all tenants.",
    ),
]
TenantName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)
]


class CreateTenantRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Acme Labs", "slug": "acme-labs", "billing_email": "billing@acme.example"},
            ]
        },
    )
    name: TenantName
    slug: Slug
    billing_email: EmailStr | None = Field(None, description="Where invoices go; defaults to none.")


class TenantLinks(BaseModel):
    self: str
    workflow: str


class TenantAcceptedResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tenant_id": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "workflow_id": "tenant-0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "status": "provisioning",
                    "links": {
                        "self": "/v1/tenants/0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                        "workflow": "/v1/workflows/tenant-0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    },
                }
            ]
        }
    )
    tenant_id: uuid.UUID
    workflow_id: str
    status: str = Field(
        description="`provisioning` for a new tenant; a replayed Idempotency-Key answers the tenant's current status."
    )
    links: TenantLinks


class TenantSummary(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    status: TenantStatus
    role: Role = Field(description="The caller's role in this tenant.")
    created_at: datetime
    activated_at: datetime | None


class TenantBillingView(BaseModel):
    currency: str
    billing_email: str | None
    stripe_customer_id: str | None


class LastInvoiceView(BaseModel):
    number: int
    amount: int
    currency: str
    status: str


class TenantView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "name": "Acme Labs",
                    "slug": "acme-labs",
                    "status": "provisioning",
                    "failure_reason": None,
                    "role": "owner",
                    "created_at": "2025-01-01T12:00:00Z",
                    "activated_at": None,
                    "billing": None,
                    "saga": {
                        "saga": "tenant_provisioning",
                        "status": "running",
                        "step": "create_stripe_customer",
                        "completed_steps": ["create_tenant", "add_owner_membership"],
                        "compensations": [],
                    },
                }
            ]
        }
    )
    id: uuid.UUID
    name: str
    slug: str
    status: TenantStatus
    failure_reason: str | None
    role: Role | None = Field(
        description="The caller's role; null for the creator of a tenant whose "
        "provisioning has not (or no longer) made them a member."
    )
    created_at: datetime
    activated_at: datetime | None
    billing: TenantBillingView | None
    member_count: int = 0
    plan: str | None = Field(None, description="The plan of the tenant's latest subscription.")
    subscription_status: str | None = None
    last_invoice: LastInvoiceView | None = None
    open_dead_letters: int = Field(0, description="Emails of this tenant waiting for an operator.")
    saga: SagaState | None = Field(description="The provisioning saga's state while `status` is `provisioning`.")


class MemberView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "6d1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                    "email": "ada@example.com",
                    "display_name": "Ada",
                    "role": "owner",
                    "joined_at": "2025-01-01T12:00:00Z",
                }
            ]
        }
    )
    user_id: uuid.UUID
    email: str
    display_name: str | None
    role: Role
    joined_at: datetime


class ChangeRoleRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "admin"}]})
    role: Role


class CreateInvitationRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "grace@example.com", "role": "member"},
            ]
        },
    )
    email: EmailStr
    role: InvitableRole = "member"


class InvitationLinks(BaseModel):
    self: str
    workflow: str


class InvitationAcceptedResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "invitation_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "workflow_id": "invitation-9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "status": "pending",
                    "links": {
                        "self": "/v1/tenants/0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e/invitations/"
                        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                        "workflow": "/v1/workflows/invitation-9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    },
                }
            ]
        }
    )
    invitation_id: uuid.UUID
    workflow_id: str
    status: str
    links: InvitationLinks


class InvitationView(BaseModel):
    id: uuid.UUID
    email: str
    role: InvitableRole
    status: InvitationStatus
    expires_at: datetime
    created_at: datetime


class AcceptInvitationRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"token": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e.Zk9vYmFyYmF6cXV4LWludml0YXRpb24"},
            ]
        },
    )
    token: OpaqueToken


class InvitationAcceptResponse(BaseModel):
    tenant_id: uuid.UUID
    role: InvitableRole
    status: Literal["accepted", "accepting"] = Field(
        description="`accepting` (202) if the invitation saga has not finished within 15 s."
    )


# --- email delivery tracking (tenant admins) and dead letters (platform operators) -----------------------------

EmailStateName = Literal["queued", "sending", "deferred", "sent", "failed", "dead_lettered", "discarded", "suppressed"]
EMAIL_STATES: tuple[str, ...] = EmailStateName.__args__  # type: ignore[attr-defined]
TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,50}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]

_EMAIL_EXAMPLE: JsonDict = {
    "id": "5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f",
    "template": "invitation",
    "to_address": "grace@example.com",
    "subject": "You're invited to Acme Labs",
    "state": "deferred",
    "attempts": 2,
    "last_reply": "421 4.7.0 Try again later",
    "created_at": "2025-01-01T12:00:00Z",
    "updated_at": "2025-01-01T12:00:15Z",
    "sent_at": None,
}


class EmailView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EMAIL_EXAMPLE]})
    id: uuid.UUID = Field(description="The message id (its workflow is `email-{id}`, its Message-ID carries it).")
    template: str
    to_address: str
    subject: str | None
    state: str = Field(
        description="queued, sending, deferred, sent, failed, dead_lettered, discarded or suppressed.",
        examples=["sent"],
    )
    attempts: int = Field(description="SMTP attempts so far.")
    last_reply: str | None = Field(description="The last SMTP reply (or connection error), if any.")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class EmailPage(BaseModel):
    items: list[EmailView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")


class EmailStats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "since": "2025-01-01T00:00:00Z",
                    "until": "2025-01-02T00:00:00Z",
                    "total": 12,
                    "by_state": {
                        "queued": 0,
                        "sending": 0,
                        "deferred": 1,
                        "sent": 10,
                        "failed": 0,
                        "dead_lettered": 1,
                        "discarded": 0,
                        "suppressed": 0,
                    },
                    "by_template": {"invitation": 4, "welcome": 8},
                    "by_template_state": {
                        "invitation": {"sent": 2, "deferred": 1, "dead_lettered": 1},
                        "welcome": {"sent": 8},
                    },
                }
            ]
        }
    )
    since: datetime = Field(description="Window start (inclusive), on `created_at`.")
    until: datetime = Field(description="Window end (exclusive).")
    total: int
    by_state: dict[str, int] = Field(description="Every state, zeros included.")
    by_template: dict[str, int] = Field(description="Templates with at least one message in the window.")
    by_template_state: dict[str, dict[str, int]] = Field(description="Per template, its non-zero states.")


class AdminEmailView(EmailView):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_EMAIL_EXAMPLE,
                    "state": "dead_lettered",
                    "last_reply": "550 5.1.1 No such user",
                    "tenant_id": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "workflow_id": "email-5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f",
                }
            ]
        }
    )
    tenant_id: uuid.UUID | None = Field(description="Null for platform mail (registration).")
    workflow_id: str


class AdminEmailPage(BaseModel):
    items: list[AdminEmailView]
    next_cursor: str | None


class AdminEmailLinks(BaseModel):
    self: str
    retry: str
    discard: str


class AdminEmailDetail(AdminEmailView):
    saga: SagaState | None = Field(
        description="The delivery workflow's saga state (query `saga_state`) while it "
        "runs; null once it has ended or if it cannot answer."
    )
    links: AdminEmailLinks


class RetryEmailRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {},
                {"to_address": "grace.hopper@example.com", "reason": "typo in the address"},
            ]
        },
    )
    to_address: EmailStr | None = Field(None, description="Send to this corrected address instead.")
    reason: Reason | None = None


class DiscardEmailRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "mailbox closed"}]})
    reason: Reason | None = None


class EmailDecisionAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "message_id": "5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f",
                    "workflow_id": "email-5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f",
                    "action": "retry",
                    "links": {"self": "/v1/admin/emails/5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f"},
                }
            ]
        }
    )
    message_id: uuid.UUID
    workflow_id: str
    action: Literal["retry", "discard"]
    links: dict[str, str]


class SuppressionView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
                    "tenant_id": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "address": "nobody@example.com",
                    "reason": "550 5.1.1 No such user",
                    "message_id": "5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f",
                    "created_at": "2025-01-01T12:00:20Z",
                }
            ]
        }
    )
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    address: str
    reason: str
    message_id: uuid.UUID | None
    created_at: datetime


class SuppressionPage(BaseModel):
    items: list[SuppressionView]
    next_cursor: str | None


# --- paid sign-up (user + tenant + first payment in one saga) ------------------------------------------------

PlanId = Annotated[
    str,
    Field(pattern=r"^[a-z0-9-]{3,40}$", examples=["starter-monthly"], description="A plan id from `GET /v1/plans`."),
]
PaymentMethodId = Annotated[
    str,
    Field(
        pattern=r"^pm_[A-Za-z0-9_]+$",
        max_length=255,
        examples=["pm_card_visa"],
        description="A Stripe PaymentMethod id (card data never reaches us). Stripe's test ids work against the "
        "sandbox: `pm_card_visa` succeeds, `pm_card_chargeDeclined` and "
        "`pm_card_chargeDeclinedInsufficientFunds` are declined.",
    ),
]


class SignupRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "password": "correct horse battery staple",
                    "display_name": "Ada",
                    "tenant_name": "Acme Labs",
                    "slug": "acme-labs",
                    "plan": "starter-monthly",
                    "payment_method": "pm_card_visa",
                }
            ]
        },
    )
    email: EmailStr
    password: Password
    display_name: DisplayName | None = None
    tenant_name: TenantName
    slug: Slug
    plan: PlanId
    payment_method: PaymentMethodId


class SignupLinks(BaseModel):
    self: str = Field(description="The sign-up's outcome (`GET /v1/signup/{workflow_id}`).")
    workflow: str
    verify: str = Field(description="Verify the email address with the emailed token, then log in.")
    tenant: str
    subscription: str


SignupStatusName = Literal["pending", "active", "declined", "rejected", "failed"]


class SignupResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "active",
                    "subscription_status": "active",
                    "user_id": "6d1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                    "tenant_id": "0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                    "subscription_id": "4c3b2a19-0f8e-4d7c-9b6a-5e4d3c2b1a09",
                    "workflow_id": "signup-6d1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                    "links": {
                        "self": "/v1/signup/signup-6d1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                        "workflow": "/v1/workflows/signup-6d1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                        "verify": "/v1/auth/verify",
                        "tenant": "/v1/tenants/0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e",
                        "subscription": "/v1/tenants/0b7e4c1e-2f7d-4a4e-9d1c-3b8f5a6c7d8e/subscriptions/"
                        "4c3b2a19-0f8e-4d7c-9b6a-5e4d3c2b1a09",
                    },
                }
            ]
        }
    )
    status: SignupStatusName = Field(
        description="`active` for a 201: paid (or in trial), subscription started. "
        "The user must still verify their email address to log in."
    )
    subscription_status: Literal["active", "trialing"] | None = None
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    workflow_id: str
    status_token: str = Field(
        description="Proves you signed up: send it to `GET /v1/signup/{workflow_id}` (`?status_token=` or the "
        "`Signup-Status-Token` header) to read the outcome. Every answer naming the sign-up carries it."
    )
    links: SignupLinks


class SignupStatusView(BaseModel):
    """`GET /v1/signup/{workflow_id}`: where a sign-up stands (no PII)."""

    status: SignupStatusName = Field(
        description="pending (still deciding), active, declined (everything "
        "unwound), rejected (email or slug taken), failed (unwound)."
    )
    subscription_status: Literal["active", "trialing"] | None = None
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    subscription_id: uuid.UUID
    workflow_id: str
    reason: str | None = None
    decline_code: str | None = None


# --- the caller's account: profile, password, email change ----------------------------------------------------


class ProfileUpdate(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"display_name": "Ada Lovelace"}]})
    display_name: DisplayName | None = Field(default=None, description="Omit to leave it; null clears it.")


class PasswordChange(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"current_password": "correct horse battery staple", "new_password": "a new long passphrase"}]
        },
    )
    current_password: Password
    new_password: Password


class EmailChangeRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"new_email": "ada@new.example.com", "current_password": "correct horse battery staple"}]
        },
    )
    new_email: EmailStr
    current_password: Password


class EmailChangeLinks(BaseModel):
    self: str
    verify: str


class EmailChangeAcceptedResponse(BaseModel):
    change_id: uuid.UUID
    workflow_id: str
    status: str = Field(description="The saga's status: `waiting` for the verification of the new address, …")
    links: EmailChangeLinks


# --- the audit trail -------------------------------------------------------------------------------------------


class AggregateRef(BaseModel):
    type: str
    id: str


class AuditEvent(BaseModel):
    id: uuid.UUID = Field(description="The event id (every consumer's dedupe key).")
    type: str
    version: int = Field(description="The version of the event type's payload schema.")
    occurred_at: datetime
    actor: uuid.UUID | None = Field(description="The user who acted; null: the system (a saga step, a schedule).")
    aggregate: AggregateRef
    tenant_id: uuid.UUID | None
    payload: dict[str, object]


class AuditEventPage(BaseModel):
    items: list[AuditEvent]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")

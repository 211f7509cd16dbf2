"""SQLModel tables. Never imported by workflow modules (the sandbox would re-import SQLAlchemy)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, SmallInteger, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = False, default_now: bool = True) -> Any:
    return Field(
        default_factory=utcnow if default_now else None,
        sa_column=Column(
            DateTime(timezone=True), nullable=nullable, server_default=func.now() if default_now else None
        ),
    )


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (Index("ux_users_email_lower", func.lower(text("email")), unique=True),)

    id: uuid.UUID = Field(primary_key=True)
    email: str = Field(max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    password_hash: str = Field(max_length=512)
    status: str = Field(max_length=20, index=True)  # pending | active
    is_platform_admin: bool = Field(default=False)
    created_at: datetime = _ts()
    verified_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class VerificationToken(SQLModel, table=True):
    """Only the SHA-256 of a token is stored; the token itself exists only in the email."""

    __tablename__ = "verification_tokens"

    id: uuid.UUID = Field(primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    purpose: str = Field(max_length=40)
    token_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False, unique=True))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    created_at: datetime = _ts()


class EmailChange(SQLModel, table=True):
    """A user's request to move to `new_email` (the email-change saga's aggregate). While `pending` it reserves
    the address: no other user may register it or reserve it (migration 0009's partial unique index)."""

    __tablename__ = "email_changes"

    id: uuid.UUID = Field(primary_key=True)  # the saga's business key: workflow `email-change-{id}`
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    new_email: str = Field(max_length=320)
    old_email: str | None = Field(default=None, max_length=320)  # set by the swap: the notice goes there
    token_id: uuid.UUID = Field(unique=True)
    status: str = Field(max_length=20)  # pending | completed | expired | cancelled | superseded
    created_at: datetime = _ts()
    closed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class DomainEvent(SQLModel, table=True):
    """Append-only audit trail and the outbox the relay publishes from; a trigger refuses UPDATE and DELETE.

    Not mapped: `txid` (xid8), the writing transaction's id, filled by the database (migration 0007)."""

    __tablename__ = "domain_events"
    __table_args__ = (Index("ix_domain_events_type_occurred_at", "type", "occurred_at"),)  # alert signals (0012)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    type: str = Field(max_length=100, index=True)
    aggregate_type: str = Field(max_length=50)
    aggregate_id: str = Field(max_length=100, index=True)
    tenant_id: uuid.UUID | None = Field(default=None, index=True)
    workflow_id: str | None = Field(default=None, max_length=200)
    version: int = Field(default=1, sa_column=Column(SmallInteger, nullable=False, server_default="1"))
    actor_id: uuid.UUID | None = None  # the user who acted; None: the system (a saga step, a schedule)
    user_id: uuid.UUID | None = None  # the user the event concerns, if any
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    occurred_at: datetime = _ts()


# --- tenants: every table below carries tenant_id (tenants: its id) and is isolated by row-level security,
# enabled and forced, on the per-transaction setting app.tenant_id (migration 0002, models.db.transaction) ---


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    # A failed tenant frees its slug, so the organisation can be created again (migration 0004).
    __table_args__ = (Index("ux_tenants_slug_live", "slug", unique=True, postgresql_where=text("status <> 'failed'")),)

    id: uuid.UUID = Field(primary_key=True)  # the tenant id itself; its RLS policy is on this column
    name: str = Field(max_length=200)
    slug: str = Field(max_length=40)
    status: str = Field(max_length=20)  # provisioning | active | failed
    failure_reason: str | None = Field(default=None, max_length=500)
    created_by: uuid.UUID = Field(foreign_key="users.id")
    created_at: datetime = _ts()
    activated_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"

    tenant_id: uuid.UUID = Field(primary_key=True, foreign_key="tenants.id", ondelete="CASCADE")
    user_id: uuid.UUID = Field(primary_key=True, foreign_key="users.id", ondelete="CASCADE", index=True)
    role: str = Field(max_length=20)  # owner | admin | member
    created_at: datetime = _ts()


class TenantBilling(SQLModel, table=True):
    __tablename__ = "tenant_billing"

    tenant_id: uuid.UUID = Field(primary_key=True, foreign_key="tenants.id", ondelete="CASCADE")
    stripe_customer_id: str | None = Field(default=None, max_length=100)
    currency: str = Field(max_length=3)
    billing_email: str | None = Field(default=None, max_length=320)
    plan: str | None = Field(default=None, max_length=50)
    created_at: datetime = _ts()


class TenantSettings(SQLModel, table=True):
    __tablename__ = "tenant_settings"

    tenant_id: uuid.UUID = Field(primary_key=True, foreign_key="tenants.id", ondelete="CASCADE")
    values: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _ts()


class Invitation(SQLModel, table=True):
    __tablename__ = "invitations"

    id: uuid.UUID = Field(primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    email: str = Field(max_length=320)
    role: str = Field(max_length=20)
    status: str = Field(max_length=20)  # pending | accepted | revoked | expired
    token_hash: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True, unique=True))
    invited_by: uuid.UUID = Field(foreign_key="users.id")
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    accepted_by: uuid.UUID | None = Field(default=None)
    created_at: datetime = _ts()
    closed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


TENANT_SCOPED_TABLES = (
    "tenants",
    "memberships",
    "tenant_billing",
    "tenant_settings",
    "invitations",
    "subscriptions",
    "invoices",
    "invoice_counters",
    "webhook_endpoints",
    "webhook_deliveries",
)


# --- email pipeline (migration 0003): tenant-scoped, tenant_id NULL for platform mail (registration) ---


class EmailMessage(SQLModel, table=True):
    """One message's delivery tracking; the body is rendered at send time and never stored."""

    __tablename__ = "email_messages"

    id: uuid.UUID = Field(primary_key=True)  # the message id: workflow `email-{id}`, Message-ID header
    tenant_id: uuid.UUID | None = Field(default=None, foreign_key="tenants.id", ondelete="CASCADE", index=True)
    template: str = Field(max_length=50, index=True)
    to_address: str = Field(max_length=320)
    subject: str | None = Field(default=None, max_length=300)
    state: str = Field(max_length=20, index=True)  # queued|sending|deferred|sent|failed|dead_lettered|discarded
    attempts: int = Field(default=0)
    last_reply: str | None = Field(default=None, max_length=500)
    workflow_id: str = Field(max_length=200)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    sent_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class EmailSuppression(SQLModel, table=True):
    """An address that failed permanently: no further sends to it (per tenant) until an operator removes it."""

    __tablename__ = "email_suppressions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID | None = Field(default=None, foreign_key="tenants.id", ondelete="CASCADE", index=True)
    address: str = Field(max_length=320)
    reason: str = Field(max_length=500)
    message_id: uuid.UUID | None = Field(default=None)
    created_at: datetime = _ts()


# --- billing (migration 0005): tenant-scoped and isolated like the tenant tables ---


class Subscription(SQLModel, table=True):
    """The read model of a `subscription-{id}` workflow (which owns the truth); the API inserts it `incomplete`.

    Card data never reaches us: `payment_method` is a Stripe PaymentMethod id. At most one live
    (not canceled, not unpaid) subscription per tenant (a partial unique index)."""

    __tablename__ = "subscriptions"

    id: uuid.UUID = Field(primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    plan_id: str = Field(max_length=40)
    status: str = Field(max_length=20)  # incomplete | trialing | active | past_due | unpaid | canceled
    payment_method: str = Field(max_length=255)
    workflow_id: str = Field(max_length=200)
    current_period_start: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    current_period_end: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_by: uuid.UUID | None = Field(default=None)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    canceled_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class Invoice(SQLModel, table=True):
    """One invoice per billing cycle (its workflow id is the idempotency key while the invoice is not void).

    `number` is sequential per tenant (invoice_counters, taken in the same transaction)."""

    __tablename__ = "invoices"

    id: uuid.UUID = Field(primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    subscription_id: uuid.UUID = Field(index=True)
    number: int
    workflow_id: str = Field(max_length=200)
    kind: str = Field(max_length=20)  # period | proration
    period_index: int
    period_start: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    period_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    plan_id: str = Field(max_length=40)
    amount: int
    currency: str = Field(max_length=3)
    status: str = Field(max_length=20)  # open | paid | uncollectible | void
    payment_intent_id: str | None = Field(default=None, max_length=255)
    decline_code: str | None = Field(default=None, max_length=100)  # of the last declined attempt
    attempts: int = Field(default=0)  # charge attempts so far
    next_retry_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))  # while dunning
    void_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts()
    closed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class InvoiceCounter(SQLModel, table=True):
    __tablename__ = "invoice_counters"

    tenant_id: uuid.UUID = Field(primary_key=True, foreign_key="tenants.id", ondelete="CASCADE")
    last_number: int = Field(default=0)


# --- outbound webhooks (migration 0010): tenant-scoped and isolated like the tenant tables ---


class WebhookEndpoint(SQLModel, table=True):
    """A tenant's webhook receiver. The signing secret is stored sealed (webhooks.secret_box), never in clear;
    during a rotation's overlap the previous secret signs too, until `previous_secret_expires_at`."""

    __tablename__ = "webhook_endpoints"

    id: uuid.UUID = Field(primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    url: str = Field(max_length=2000)
    description: str | None = Field(default=None, max_length=500)
    event_types: list[str] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))  # None: every type
    enabled: bool = True
    secret_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    previous_secret_sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    previous_secret_expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    failing_since: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))  # no 2xx since
    disabled_reason: str | None = Field(default=None, max_length=500)
    created_by: uuid.UUID | None = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint (`webhook-{id}`, id = uuid5 of endpoint + event): the delivery log's row."""

    __tablename__ = "webhook_deliveries"

    id: uuid.UUID = Field(primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", ondelete="CASCADE", index=True)
    endpoint_id: uuid.UUID = Field(foreign_key="webhook_endpoints.id", ondelete="CASCADE")
    event_id: uuid.UUID
    event_type: str = Field(max_length=100)
    workflow_id: str = Field(max_length=200)
    status: str = Field(max_length=20)  # pending | retrying | delivered | dead_lettered | failed | discarded
    attempts: int = 0
    last_status_code: int | None = None
    last_response_body: str | None = Field(default=None, max_length=1024)
    last_error: str | None = Field(default=None, max_length=500)
    last_duration_ms: int | None = None
    last_attempt_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()

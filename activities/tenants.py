"""Tenants aggregate: tenant row and status (failed, suspended), memberships, billing configuration, settings.

Every activity opens its transaction for one tenant (`transaction(engine, tenant_id=…)`), so PostgreSQL's
row-level security sees exactly that tenant's rows. Each is idempotent and each compensation tolerates
"nothing to undo": Temporal may run any of them again after a crash.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models import activity_names as names
from models.billing_cycle_contracts import SuspendTenant
from models.contracts import CreateBillingConfig, CreateTenant, MarkTenantFailed, MembershipRef, TenantRef
from models.db import transaction
from models.errors import SLUG_TAKEN
from models.events import record_event
from models.signup_contracts import DiscardTenant
from models.tables import Membership, Tenant, TenantBilling, TenantSettings, utcnow

DEFAULT_SETTINGS = {"timezone": "UTC", "locale": "en", "invitation_roles": ["admin", "member"]}


async def set_tenant_status(
    session: AsyncSession,
    tenant_id: UUID,
    status: str,
    reason: str | None,
    *,
    event: str,
    payload: dict[str, Any],
    workflow_id: str,
    only_from: str | None = None,
) -> None:
    """Move a tenant to `status` (keeping the reason) with its domain event, in the caller's transaction.
    Idempotent: a tenant already there, gone, or (with `only_from`) in another status is left as it is."""
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None or tenant.status == status or (only_from is not None and tenant.status != only_from):
        return
    tenant.status, tenant.failure_reason = status, reason[:500] if reason else None
    session.add(tenant)
    record_event(session, event, "tenant", tenant_id, payload, tenant_id=tenant_id, workflow_id=workflow_id)


class TenantActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name=names.CREATE_TENANT)
    async def create_tenant(self, req: CreateTenant) -> None:
        try:
            async with transaction(self.engine, tenant_id=req.tenant_id) as session:
                if await session.get(Tenant, req.tenant_id) is not None:
                    return  # a retry after the row was committed
                session.add(
                    Tenant(
                        id=req.tenant_id, name=req.name, slug=req.slug, status="provisioning", created_by=req.created_by
                    )
                )
                record_event(
                    session,
                    "tenant.created",
                    "tenant",
                    req.tenant_id,
                    {"slug": req.slug, "name": req.name, "created_by": str(req.created_by)},
                    tenant_id=req.tenant_id,
                    workflow_id=req.workflow_id,
                )
        except IntegrityError:
            # Other tenants' rows are invisible here; the unique index on slug still sees them all.
            raise ApplicationError("slug already taken", type=SLUG_TAKEN, non_retryable=True) from None

    @activity.defn(name=names.MARK_TENANT_FAILED)
    async def mark_tenant_failed(self, req: MarkTenantFailed) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            await set_tenant_status(
                session,
                req.tenant_id,
                "failed",
                req.reason,
                event="tenant.failed",
                payload={"reason": req.reason[:500]},
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=names.SUSPEND_TENANT)
    async def suspend_tenant(self, req: SuspendTenant) -> None:
        """An unpaid subscription suspends its tenant (status `suspended`, reason kept) until a new
        subscription's first period is paid (`subscriptions.set_status`)."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            await set_tenant_status(
                session,
                req.tenant_id,
                "suspended",
                req.reason,
                event="tenant.suspended",
                payload={"subscription_id": str(req.subscription_id), "reason": req.reason[:500]},
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=names.ADD_MEMBERSHIP)
    async def add_membership(self, req: MembershipRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(
                insert(Membership)
                .values(tenant_id=req.tenant_id, user_id=req.user_id, role=req.role)
                .on_conflict_do_nothing()
            )
            if result.rowcount:
                record_event(
                    session,
                    "member.added",
                    "membership",
                    req.user_id,
                    {"role": req.role},
                    tenant_id=req.tenant_id,
                    user_id=req.user_id,  # on the new member's own stream too
                )

    @activity.defn(name=names.REMOVE_MEMBERSHIP)
    async def remove_membership(self, req: MembershipRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(
                delete(Membership).where(
                    col(Membership.tenant_id) == req.tenant_id, col(Membership.user_id) == req.user_id
                )
            )
            if result.rowcount:
                record_event(
                    session,
                    "member.removed",
                    "tenant",
                    req.tenant_id,
                    {"user_id": str(req.user_id), "role": req.role},
                    tenant_id=req.tenant_id,
                )

    @activity.defn(name=names.CREATE_BILLING_CONFIG)
    async def create_billing_config(self, req: CreateBillingConfig) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(
                insert(TenantBilling)
                .values(
                    tenant_id=req.tenant_id,
                    stripe_customer_id=req.stripe_customer_id,
                    currency=req.currency,
                    billing_email=req.billing_email,
                )
                .on_conflict_do_nothing()
            )
            if result.rowcount:
                record_event(
                    session,
                    "tenant.billing_configured",
                    "tenant",
                    req.tenant_id,
                    req.model_dump(mode="json", exclude={"tenant_id"}),
                    tenant_id=req.tenant_id,
                )

    @activity.defn(name=names.DELETE_BILLING_CONFIG)
    async def delete_billing_config(self, req: TenantRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            await session.exec(delete(TenantBilling).where(col(TenantBilling.tenant_id) == req.tenant_id))

    @activity.defn(name=names.APPLY_DEFAULT_SETTINGS)
    async def apply_default_settings(self, req: TenantRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            await session.exec(
                insert(TenantSettings).values(tenant_id=req.tenant_id, values=DEFAULT_SETTINGS).on_conflict_do_nothing()
            )

    @activity.defn(name=names.REMOVE_DEFAULT_SETTINGS)
    async def remove_default_settings(self, req: TenantRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            await session.exec(delete(TenantSettings).where(col(TenantSettings.tenant_id) == req.tenant_id))

    @activity.defn(name=names.ACTIVATE_TENANT)
    async def activate_tenant(self, req: TenantRef) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(
                update(Tenant)
                .where(col(Tenant.id) == req.tenant_id, col(Tenant.status) == "provisioning")
                .values(status="active", activated_at=utcnow())
            )
            if result.rowcount:
                record_event(
                    session,
                    "tenant.provisioned",
                    "tenant",
                    req.tenant_id,
                    {},
                    tenant_id=req.tenant_id,
                    workflow_id=req.workflow_id,
                )

    @activity.defn(name=names.DISCARD_TENANT)
    async def discard_tenant(self, req: DiscardTenant) -> None:
        """Paid sign-up unwinding: the tenant row goes, and with it (ON DELETE CASCADE) its memberships, billing
        config, settings, invitations, emails' tracking, subscriptions and invoices. The audit trail stays."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(delete(Tenant).where(col(Tenant.id) == req.tenant_id))
            if result.rowcount:
                record_event(
                    session,
                    "tenant.discarded",
                    "tenant",
                    req.tenant_id,
                    {"reason": req.reason[:500]},
                    tenant_id=req.tenant_id,
                    workflow_id=req.workflow_id,
                )

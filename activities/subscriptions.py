"""The subscriptions read model (a paid period also lifts its tenant's suspension).

The `subscription-{id}` workflow owns a subscription's truth and is the only writer of its row: it inserts it
first (`incomplete`; the partial unique index refuses a second live subscription of a tenant), then mirrors
each status change into it (with a `subscription.<status>` domain event in the same transaction), so the API
can list and check subscriptions without asking Temporal. Idempotent: a retry changes nothing twice.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.tenants import set_tenant_status
from models import activity_names as names
from models.billing_cycle_contracts import CreateSubscription, SetSubscriptionStatus
from models.db import transaction
from models.errors import SUBSCRIPTION_EXISTS
from models.events import record_event
from models.tables import Subscription, utcnow

LIVE_INDEX = "ux_subscriptions_live"  # the partial unique index: one live subscription per tenant


class SubscriptionActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name=names.CREATE_SUBSCRIPTION)
    async def create(self, req: CreateSubscription) -> None:
        try:
            async with transaction(self.engine, tenant_id=req.tenant_id) as db:
                if await db.get(Subscription, req.subscription_id) is not None:
                    return  # a retry after the insert committed
                db.add(
                    Subscription(
                        id=req.subscription_id,
                        tenant_id=req.tenant_id,
                        plan_id=req.plan_id,
                        status="incomplete",
                        payment_method=req.payment_method,
                        workflow_id=req.workflow_id,
                        created_by=req.created_by,
                    )
                )
        except IntegrityError as err:
            if LIVE_INDEX not in str(err.orig):
                raise
            raise ApplicationError(
                "the tenant already has a live subscription", type=SUBSCRIPTION_EXISTS, non_retryable=True
            ) from None

    @activity.defn(name=names.SET_SUBSCRIPTION_STATUS)
    async def set_status(self, req: SetSubscriptionStatus) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            row = await db.get(Subscription, req.subscription_id)
            if row is None:  # a paid sign-up records its subscription before starting it: the first word is this
                row = Subscription(
                    id=req.subscription_id,
                    tenant_id=req.tenant_id,
                    plan_id=req.plan_id,
                    status="incomplete",
                    payment_method=req.payment_method or "",
                    workflow_id=req.workflow_id,
                )
            changed = row.status != req.status
            row.status, row.plan_id = req.status, req.plan_id
            row.current_period_start, row.current_period_end = req.current_period_start, req.current_period_end
            if req.payment_method:
                row.payment_method = req.payment_method
            if req.status == "canceled" and row.canceled_at is None:
                row.canceled_at = utcnow()
            row.updated_at = utcnow()
            db.add(row)
            if changed:
                record_event(
                    db,
                    f"subscription.{req.status}",
                    "subscription",
                    req.subscription_id,
                    {"plan_id": req.plan_id},
                    tenant_id=req.tenant_id,
                    workflow_id=req.workflow_id,
                )
            if req.status == "active":  # paid again: a tenant suspended for an unpaid subscription is back
                await set_tenant_status(
                    db,
                    req.tenant_id,
                    "active",
                    None,
                    event="tenant.reactivated",
                    payload={"subscription_id": str(req.subscription_id)},
                    workflow_id=req.workflow_id,
                    only_from="suspended",
                )

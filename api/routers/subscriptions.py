"""Subscriptions of a tenant and their invoices: subscribe, read, cancel, change plan, change payment method.

`subscription-{id}` (workflows/subscription.py) owns a subscription's truth and its row, and its Temporal
Schedule (`billing-schedule-{id}`) drives its billing cycles; the `subscriptions` and `invoices` tables are their
read model, which the API only reads. Subscribing is an update-with-start answered once the workflow has written
the row (or refused a second live one). Commands are updates: the workflow's validator rejects what cannot apply,
and the answer is the state once the request applied (an upgrade charges its proration at once, a downgrade
waits for the period end).
Card data never reaches us: a payment method is a Stripe PaymentMethod id (`pm_…`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, Field
from sqlmodel import col, select
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
)
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import DbDep, RedisDep, SettingsDep, TemporalConnectorDep, TenantIdPath, TenantManager, TenantMember
from api.problems import (
    NO_BILLING_ACCOUNT,
    NOT_FOUND,
    SUBSCRIPTION_ENDED,
    TENANT_NOT_ACTIVE,
    Problem,
    problem_responses,
    refusal,
)
from api.routers.plans import resolve_plan
from api.saga_start import IdempotencyKey, SagaStart, request_fingerprint, request_key, start_saga
from api.schemas import PaymentMethodId, PlanId, _Request
from api.temporal_client import answer_within
from models.billing_cycle_contracts import (
    CancelSubscription,
    ChangePlan,
    PaymentMethodUpdated,
    SubscriptionInput,
    SubscriptionState,
)
from models.db import transaction
from models.errors import error_type
from models.names import (
    QUERY_SUBSCRIPTION_STATE,
    SA_SUBSCRIPTION_ID,
    SA_TENANT_ID,
    SA_USER_ID,
    SUBSCRIPTION_WORKFLOW,
    UPDATE_CANCEL_SUBSCRIPTION,
    UPDATE_CHANGE_PLAN,
    UPDATE_PAYMENT_METHOD,
    UPDATE_SUBSCRIPTION_ACCEPTED,
    billing_schedule_id,
    subscription_workflow_id,
)
from models.tables import Invoice, Subscription, Tenant, TenantBilling

log = logging.getLogger("prognet.api")
router = APIRouter(tags=["billing"], dependencies=[Depends(require_json_body)])

STATE_QUERY_TIMEOUT_SECONDS = 2.0

SubscriptionIdPath = Annotated[uuid.UUID, Path(description="The subscription's id.")]


class SubscribeRequest(_Request):
    plan: PlanId
    payment_method: PaymentMethodId


class CancelRequest(_Request):
    at_period_end: bool = Field(
        True,
        description="True: runs out at the period end. False: ends now and "
        "refunds the unused part of the paid period pro rata.",
    )
    reason: str | None = Field(None, max_length=500)


class ChangePlanRequest(_Request):
    plan: PlanId


class PaymentMethodRequest(_Request):
    payment_method: PaymentMethodId


class SubscriptionLinks(BaseModel):
    self: str
    workflow: str
    schedule: str = Field(description="The Temporal Schedule driving its billing cycles (Schedules page).")
    invoices: str


class SubscriptionAccepted(BaseModel):
    subscription_id: uuid.UUID
    workflow_id: str
    status: str
    links: SubscriptionLinks


LIVE_FIELDS = {
    "status",
    "trial_end",
    "period_index",
    "current_period_start",
    "current_period_end",
    "paid_through",
    "cycles_paid",
    "cancel_at_period_end",
    "pending_plan",
    "refunded_amount",
    "last_proration_amount",
    "notes",
}


class SubscriptionChanged(SubscriptionAccepted):
    live: dict[str, Any] = Field(
        description="What the workflow knows once the request applied (the fields of `live` in a subscription)."
    )


class InvoiceView(BaseModel):
    id: uuid.UUID
    number: int = Field(description="Sequential per tenant: 1, 2, 3, …")
    subscription_id: uuid.UUID
    kind: str = Field(description="`period`, or `proration`: the mid-period charge of an upgrade.")
    period_index: int
    period_start: datetime
    period_end: datetime
    plan_id: str
    amount: int = Field(description="In minor units (cents).")
    currency: str
    status: str = Field(
        description="`open` (being charged, or in dunning while its subscription is `past_due`), `paid`, "
        "`uncollectible` (dunning exhausted) or `void` (its billing cycle was unwound)."
    )
    payment_intent_id: str | None = Field(
        description="The Stripe PaymentIntent that paid it; while open, that of its last declined attempt (null "
        "when Stripe refused the payment method before creating one)."
    )
    decline_code: str | None = Field(
        description="Why its last declined attempt failed: Stripe's decline code (e.g. `insufficient_funds`), "
        "`payment_timeout` when no outcome came in time; null while no attempt was declined."
    )
    attempts: int = Field(description="Charge attempts made so far (dunning retries included).")
    next_retry_at: datetime | None = Field(
        description="While in dunning: when the next charge attempt is due (a new payment method retries at "
        "once). Null otherwise."
    )
    created_at: datetime
    closed_at: datetime | None


class SubscriptionView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    plan_id: str
    status: str
    payment_method: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    created_at: datetime
    canceled_at: datetime | None
    live: dict[str, Any] | None = Field(
        None,
        description="What the running workflow knows now (trial end, pending downgrade, notes), when it "
        "answers within 2 s; null once it has ended.",
    )
    invoices: list[InvoiceView] = Field(default_factory=list)
    links: SubscriptionLinks


def _links(tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> SubscriptionLinks:
    base = f"/v1/tenants/{tenant_id}"
    return SubscriptionLinks(
        self=f"{base}/subscriptions/{subscription_id}",
        workflow=subscription_workflow_id(subscription_id),
        schedule=billing_schedule_id(subscription_id),
        invoices=f"{base}/invoices?subscription_id={subscription_id}",
    )


def _invoice_view(row: Invoice) -> InvoiceView:
    return InvoiceView.model_validate(row, from_attributes=True)


@router.post(
    "/v1/tenants/{tenant_id}/subscriptions",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubscriptionAccepted,
    summary="Subscribe the tenant to a plan",
    description="Owners and admins of an active tenant (or of one suspended for an unpaid subscription: a new "
    "subscription whose first period is paid lifts the suspension). Starts `subscription-{id}`: a trial "
    "(if the plan has one), then a billing cycle per period, driven by the Temporal Schedule "
    "`billing-schedule-{id}`. The first period is charged at once (no trial). One live subscription per "
    "tenant: answers once the workflow has written the subscription, a second live one is a 409.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
async def subscribe(
    response: Response,
    tenant_id: TenantIdPath,
    body: SubscribeRequest,
    manager: TenantManager,
    engine: DbDep,
    settings: SettingsDep,
    redis: RedisDep,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> SubscriptionAccepted:
    plan = resolve_plan(settings, body.plan)
    fingerprint = request_fingerprint(body.plan, body.payment_method)
    key = await request_key(
        redis, settings, idempotency_key, "subscription", tenant_id, manager.user_id, fingerprint=fingerprint
    )
    subscription_id = key.id()
    workflow_id = subscription_workflow_id(subscription_id)
    client = await temporal.get()  # with Temporal down: a 503, and nothing started
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        tenant = await db.get(Tenant, tenant_id)
        billing = await db.get(TenantBilling, tenant_id)
    if tenant is None or tenant.status not in ("active", "suspended"):  # suspended: subscribing again lifts it
        raise Problem(TENANT_NOT_ACTIVE, "A tenant can subscribe once it is active.")
    if billing is None or not billing.stripe_customer_id:
        raise Problem(NO_BILLING_ACCOUNT, "This tenant has no Stripe customer to charge.")
    reply = await start_saga(
        client,
        SagaStart(
            workflow=SUBSCRIPTION_WORKFLOW,
            workflow_id=workflow_id,
            input=SubscriptionInput(
                subscription_id=subscription_id,
                tenant_id=tenant_id,
                plan=plan,
                payment_method=body.payment_method,
                stripe_customer_id=billing.stripe_customer_id,
                notify_user_id=manager.user_id,
                dunning_schedule_days=settings.billing_dunning_days,
                poll_interval_seconds=settings.billing_poll_seconds,
                cycle_driver="schedule",
            ),
            fingerprint=fingerprint,
            reused_detail="This Idempotency-Key was already used to subscribe to a different plan or card.",
            search_attributes=[
                SearchAttributePair(SA_TENANT_ID, str(tenant_id)),
                SearchAttributePair(SA_SUBSCRIPTION_ID, str(subscription_id)),
                SearchAttributePair(SA_USER_ID, str(manager.user_id)),
            ],
            summary=f"Subscription {subscription_id} of tenant {tenant_id} to {plan.id}",
            ids={"subscription_id": str(subscription_id)},
            location=_links(tenant_id, subscription_id).self,
            links=_links(tenant_id, subscription_id).model_dump(),
        ),
        key,
        update=UPDATE_SUBSCRIPTION_ACCEPTED,
        result_type=SubscriptionState,
        response=response,
    )
    reply.raise_if_refused()  # a second live subscription: 409
    if reply.answer is not None:
        log.info(
            "subscription started", extra={"tenant_id": str(tenant_id), "workflow_id": workflow_id, "plan": plan.id}
        )
        return SubscriptionAccepted(
            subscription_id=subscription_id,
            workflow_id=workflow_id,
            status=reply.answer.status,
            links=_links(tenant_id, subscription_id),
        )
    # The same Idempotency-Key as a subscription whose workflow already ended: its row says how.
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        row = await db.get(Subscription, subscription_id)
    return SubscriptionAccepted(
        subscription_id=subscription_id,
        workflow_id=workflow_id,
        status=row.status if row is not None else "unknown",
        links=_links(tenant_id, subscription_id),
    )


async def _subscription(
    engine, member, subscription_id: uuid.UUID, with_invoices: bool = False
) -> tuple[Subscription, list[Invoice]]:
    """The subscription (404 if not this tenant's), and its invoices by number when asked, in one transaction."""
    async with transaction(engine, tenant_id=member.tenant_id, user_id=member.user_id) as db:
        row = await db.get(Subscription, subscription_id)
        if row is None or row.tenant_id != member.tenant_id:
            raise Problem(NOT_FOUND, "No subscription with this id in this tenant.")
        invoices = (
            list(
                (
                    await db.exec(
                        select(Invoice).where(Invoice.subscription_id == subscription_id).order_by(col(Invoice.number))
                    )
                ).all()
            )
            if with_invoices
            else []
        )
    return row, invoices


async def _live_state(client: Client, subscription_id: uuid.UUID) -> dict[str, Any] | None:
    handle = client.get_workflow_handle(subscription_workflow_id(subscription_id))
    try:
        state = await asyncio.wait_for(
            handle.query(QUERY_SUBSCRIPTION_STATE, result_type=SubscriptionState), STATE_QUERY_TIMEOUT_SECONDS
        )
    except (TimeoutError, RPCError):
        return None
    return state.model_dump(mode="json", include=LIVE_FIELDS)


@router.get(
    "/v1/tenants/{tenant_id}/subscriptions",
    response_model=list[SubscriptionView],
    summary="The tenant's subscriptions",
    description="Members; newest first.",
    responses=problem_responses(401, 404, 422),
)
async def list_subscriptions(tenant_id: TenantIdPath, member: TenantMember, engine: DbDep) -> list[SubscriptionView]:
    async with transaction(engine, tenant_id=tenant_id, user_id=member.user_id) as db:
        rows = (
            await db.exec(
                select(Subscription)
                .where(Subscription.tenant_id == tenant_id)
                .order_by(col(Subscription.created_at).desc())
            )
        ).all()
    return [SubscriptionView.model_validate({**row.model_dump(), "links": _links(tenant_id, row.id)}) for row in rows]


@router.get(
    "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}",
    response_model=SubscriptionView,
    summary="One subscription, its invoices and what its workflow knows now",
    responses=problem_responses(401, 404, 422),
)
async def get_subscription(
    tenant_id: TenantIdPath,
    subscription_id: SubscriptionIdPath,
    member: TenantMember,
    engine: DbDep,
    temporal: TemporalConnectorDep,
) -> SubscriptionView:
    row, invoices = await _subscription(engine, member, subscription_id, with_invoices=True)
    client = await temporal.try_get()
    live = await _live_state(client, subscription_id) if client is not None else None
    return SubscriptionView.model_validate(
        {
            **row.model_dump(),
            "live": live,
            "invoices": [_invoice_view(i) for i in invoices],
            "links": _links(tenant_id, subscription_id),
        }
    )


@router.get(
    "/v1/tenants/{tenant_id}/invoices",
    response_model=list[InvoiceView],
    summary="The tenant's invoices",
    description="Members; by number, newest first.",
    responses=problem_responses(401, 404, 422),
)
async def list_invoices(
    tenant_id: TenantIdPath, member: TenantMember, engine: DbDep, subscription_id: uuid.UUID | None = None
) -> list[InvoiceView]:
    query = select(Invoice).where(Invoice.tenant_id == tenant_id)
    if subscription_id is not None:
        query = query.where(Invoice.subscription_id == subscription_id)
    async with transaction(engine, tenant_id=tenant_id, user_id=member.user_id) as db:
        rows = (await db.exec(query.order_by(col(Invoice.number).desc()))).all()
    return [_invoice_view(r) for r in rows]


def _refused(exc: WorkflowUpdateFailedError) -> Exception:
    """The problem a workflow's refusal stands for (its validator's, or a second live subscription's)."""
    return refusal(error_type(exc)) or exc


async def _request(temporal, row: Subscription, update: str, arg: BaseModel) -> SubscriptionChanged:
    client = await temporal.get()
    try:
        state: SubscriptionState = await answer_within(
            client.get_workflow_handle(row.workflow_id).execute_update(update, arg, result_type=SubscriptionState)
        )
    except WorkflowUpdateFailedError as exc:
        raise _refused(exc) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(SUBSCRIPTION_ENDED, "This subscription's workflow has ended.") from None
        raise
    log.info("subscription %s applied", update, extra={"tenant_id": str(row.tenant_id), "workflow_id": row.workflow_id})
    return SubscriptionChanged(
        subscription_id=row.id,
        workflow_id=row.workflow_id,
        status=state.status,
        live=state.model_dump(mode="json", include=LIVE_FIELDS),
        links=_links(row.tenant_id, row.id),
    )


COMMAND_RESPONSES = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503)


@router.post(
    "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}/cancel",
    response_model=SubscriptionChanged,
    summary="Cancel at the period end, or now with a prorated refund",
    description="Owners and admins. Answers once applied (a cancel now: once the refund is made); an "
    "ended subscription is a 409.",
    responses=COMMAND_RESPONSES,
)
async def cancel(
    tenant_id: TenantIdPath,
    subscription_id: SubscriptionIdPath,
    body: CancelRequest,
    manager: TenantManager,
    engine: DbDep,
    temporal: TemporalConnectorDep,
) -> SubscriptionChanged:
    row, _ = await _subscription(engine, manager, subscription_id)
    return await _request(
        temporal,
        row,
        UPDATE_CANCEL_SUBSCRIPTION,
        CancelSubscription(at_period_end=body.at_period_end, reason=body.reason),
    )


@router.post(
    "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}/change-plan",
    response_model=SubscriptionChanged,
    summary="Change plan: an upgrade now with a proration charge, a downgrade at the period end",
    description="Owners and admins. Answers once applied: an upgrade shows in `live` (its proration, "
    "or a note that the charge was declined), a downgrade as `live.pending_plan`. The current "
    "plan is a 409; an ended subscription too.",
    responses=COMMAND_RESPONSES,
)
async def change_plan(
    tenant_id: TenantIdPath,
    subscription_id: SubscriptionIdPath,
    body: ChangePlanRequest,
    manager: TenantManager,
    engine: DbDep,
    settings: SettingsDep,
    temporal: TemporalConnectorDep,
) -> SubscriptionChanged:
    plan = resolve_plan(settings, body.plan)
    row, _ = await _subscription(engine, manager, subscription_id)
    return await _request(temporal, row, UPDATE_CHANGE_PLAN, ChangePlan(plan=plan))


@router.post(
    "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}/payment-method",
    response_model=SubscriptionChanged,
    summary="Change the payment method (an open invoice in dunning is retried at once)",
    description="Owners and admins. Answers once the workflow has the new method (the retry of an open "
    "invoice runs on).",
    responses=COMMAND_RESPONSES,
)
async def change_payment_method(
    tenant_id: TenantIdPath,
    subscription_id: SubscriptionIdPath,
    body: PaymentMethodRequest,
    manager: TenantManager,
    engine: DbDep,
    temporal: TemporalConnectorDep,
) -> SubscriptionChanged:
    row, _ = await _subscription(engine, manager, subscription_id)
    return await _request(
        temporal, row, UPDATE_PAYMENT_METHOD, PaymentMethodUpdated(payment_method=body.payment_method)
    )

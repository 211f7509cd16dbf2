"""Tenants' outbound webhook endpoints and their delivery log (owners and admins; members 403, others 404).

The signing secret (`whsec_…`) is in the answer to creation and to rotation only; it is stored sealed
(webhooks.secret_box) and never shown again. A rotated-out secret keeps signing beside the new one for
WEBHOOK_SECRET_OVERLAP (24 h), so receivers can switch without losing a delivery. Endpoint URLs are checked for
SSRF here (production: https, public addresses only) and again at each delivery.

Deliveries are not ordered per endpoint: every body carries the event's `id` and `occurred_at` to order and dedupe
by (and `webhook-id`, the delivery id, is the same on every attempt).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import DbDep, Member, SettingsDep, TemporalConnectorDep, TenantIdPath, TenantManager
from api.problems import (
    NOT_FOUND,
    UNKNOWN_EVENT_TYPE,
    WEBHOOK_DELIVERY_NOT_DEAD_LETTERED,
    WEBHOOK_TARGET_REFUSED,
    Problem,
    problem_responses,
)
from api.routers.emails import Cursor, Limit, page_after, split_page
from models.contracts import WebhookDecision
from models.db import transaction
from models.events import record_event
from models.names import SIGNAL_WEBHOOK_DECISION
from models.tables import WebhookDelivery, WebhookEndpoint, utcnow
from prognet.settings import Settings
from webhooks import secret_box
from webhooks.event_filter import MAX_FILTERS, invalid_filters
from webhooks.signing import new_secret
from webhooks.targets import MAX_URL_LENGTH, TargetRefused, check_url, resolve

log = logging.getLogger("prognet.api")

router = APIRouter(
    prefix="/v1/tenants/{tenant_id}/webhook-endpoints", tags=["webhooks"], dependencies=[Depends(require_json_body)]
)

EndpointIdPath = Annotated[uuid.UUID, Path(description="The webhook endpoint's id.")]
DeliveryIdPath = Annotated[uuid.UUID, Path(description="The delivery's id (`webhook-id` of its requests).")]
ENDPOINT_NOT_FOUND = "No webhook endpoint with this id in this tenant."
DELIVERY_NOT_FOUND = "No delivery with this id for this endpoint."

# --- bodies ------------------------------------------------------------------------------------------------------

Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH, examples=["https://example.com/webhooks"])]
Description = Annotated[str | None, Field(default=None, max_length=500)]
EventTypes = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=100)]] | None,
    Field(
        default=None,
        max_length=MAX_FILTERS,
        description="Exact event types or `prefix.*` (see `prognet events catalogue`); null or absent: every type.",
        examples=[["invoice.*", "member.added"]],
    ),
]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Url
    description: Description = None
    event_types: EventTypes = None
    enabled: bool = True


class WebhookEndpointUpdate(BaseModel):
    """Only the fields sent change; `event_types: null` means every type again."""

    model_config = ConfigDict(extra="forbid")
    url: Url | None = None
    description: Description = None
    event_types: EventTypes = None
    enabled: bool | None = None


class WebhookEndpointView(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str] | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="The first failed attempt since the last delivered one.")
    previous_secret_expires_at: datetime | None = Field(
        description="While set and in the future, the previous secret signs beside the current one."
    )
    created_at: datetime
    updated_at: datetime


class WebhookEndpointWithSecret(WebhookEndpointView):
    secret: str = Field(description="The signing secret (`whsec_…`). Shown this once: store it now.")


class WebhookDeliveryView(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: Literal["pending", "retrying", "delivered", "dead_lettered", "failed", "discarded"]
    attempts: int
    last_status_code: int | None
    last_response_body: str | None = Field(description="The receiver's last answer, first 1 KB.")
    last_error: str | None
    last_duration_ms: int | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    workflow_id: str


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


class RetryAccepted(BaseModel):
    delivery_id: uuid.UUID
    workflow_id: str
    status: Literal["retry_requested"] = "retry_requested"


# --- helpers -----------------------------------------------------------------------------------------------------


def _view(e: WebhookEndpoint) -> WebhookEndpointView:
    return WebhookEndpointView.model_validate(e, from_attributes=True)


def _delivery_view(d: WebhookDelivery) -> WebhookDeliveryView:
    return WebhookDeliveryView.model_validate(d, from_attributes=True)


async def _check_target(url: str, settings: Settings) -> None:
    """Production: https and public addresses only (resolved now; again at each delivery)."""
    try:
        if settings.allow_private_webhook_targets:
            check_url(url, allow_private=True)
        else:
            await resolve(url, allow_private=False)
    except TargetRefused as refused:
        raise Problem(WEBHOOK_TARGET_REFUSED, f"This URL cannot receive webhooks: {refused}.") from None


def _check_types(event_types: list[str] | None) -> None:
    bad = invalid_filters(event_types or [])
    if bad:
        raise Problem(
            UNKNOWN_EVENT_TYPE,
            f"Not an event type (or `prefix.*` of one): {', '.join(bad)}. See `prognet events catalogue`.",
        )


def _event_payload(e: WebhookEndpoint) -> dict:
    return {"host": urlsplit(e.url).hostname or "", "enabled": e.enabled, "event_types": e.event_types}


async def _endpoint(db: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, lock: bool = False):
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    endpoint = (await db.exec(query.with_for_update() if lock else query)).first()
    if endpoint is None:
        raise Problem(NOT_FOUND, ENDPOINT_NOT_FOUND)
    return endpoint


def _scope(engine, manager: Member):
    return transaction(engine, tenant_id=manager.tenant_id, user_id=manager.user_id)


# --- endpoints ---------------------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointWithSecret,
    summary="Add a webhook endpoint",
    description="Owners and admins. The answer carries the signing secret, shown this once. Production accepts "
    "only https URLs of public addresses (422 `webhook-target-refused`).",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def create_endpoint(
    tenant_id: TenantIdPath, body: WebhookEndpointCreate, manager: TenantManager, engine: DbDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    _check_types(body.event_types)
    await _check_target(body.url, settings)
    endpoint_id = uuid.uuid4()
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        tenant_id=tenant_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        enabled=body.enabled,
        secret_sealed=secret_box.seal(settings.derived_key(secret_box.KEY_PURPOSE), endpoint_id, secret),
        created_by=manager.user_id,
    )
    async with _scope(engine, manager) as db:
        db.add(endpoint)
        record_event(
            db,
            "webhook_endpoint.created",
            "webhook_endpoint",
            endpoint_id,
            _event_payload(endpoint),
            tenant_id=tenant_id,
            actor_id=manager.user_id,
        )
    return WebhookEndpointWithSecret(**_view(endpoint).model_dump(), secret=secret)


@router.get(
    "",
    response_model=list[WebhookEndpointView],
    summary="Your tenant's webhook endpoints",
    description="Owners and admins; oldest first. Secrets are never shown here.",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def list_endpoints(tenant_id: TenantIdPath, manager: TenantManager, engine: DbDep) -> list[WebhookEndpointView]:
    async with _scope(engine, manager) as db:
        rows = (
            await db.exec(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == tenant_id)
                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)  # type: ignore[arg-type]
            )
        ).all()
    return [_view(e) for e in rows]


@router.get(
    "/{endpoint_id}",
    response_model=WebhookEndpointView,
    summary="One webhook endpoint",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def get_endpoint(
    tenant_id: TenantIdPath, endpoint_id: EndpointIdPath, manager: TenantManager, engine: DbDep
) -> WebhookEndpointView:
    async with _scope(engine, manager) as db:
        return _view(await _endpoint(db, tenant_id, endpoint_id))


@router.patch(
    "/{endpoint_id}",
    response_model=WebhookEndpointView,
    summary="Change a webhook endpoint",
    description="Only the fields sent change. Enabling a disabled endpoint clears its failure record; its "
    "dead-lettered deliveries can then be retried.",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def update_endpoint(
    tenant_id: TenantIdPath,
    endpoint_id: EndpointIdPath,
    body: WebhookEndpointUpdate,
    manager: TenantManager,
    engine: DbDep,
    settings: SettingsDep,
) -> WebhookEndpointView:
    sent = body.model_fields_set
    if "event_types" in sent:
        _check_types(body.event_types)
    if body.url is not None:
        await _check_target(body.url, settings)
    async with _scope(engine, manager) as db:
        endpoint = await _endpoint(db, tenant_id, endpoint_id, lock=True)
        before = endpoint.model_dump()
        if body.url is not None:
            endpoint.url = body.url
        if "description" in sent:
            endpoint.description = body.description
        if "event_types" in sent:
            endpoint.event_types = body.event_types
        if body.enabled is not None:
            if body.enabled and not endpoint.enabled:
                endpoint.failing_since = None
                endpoint.disabled_reason = None
            endpoint.enabled = body.enabled
        if endpoint.model_dump() != before:
            endpoint.updated_at = utcnow()
            db.add(endpoint)
            record_event(
                db,
                "webhook_endpoint.updated",
                "webhook_endpoint",
                endpoint_id,
                _event_payload(endpoint),
                tenant_id=tenant_id,
                actor_id=manager.user_id,
            )
    return _view(endpoint)


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a webhook endpoint",
    description="Its delivery log goes with it; deliveries in flight stop, dead letters are discarded.",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def delete_endpoint(
    tenant_id: TenantIdPath,
    endpoint_id: EndpointIdPath,
    manager: TenantManager,
    engine: DbDep,
    temporal: TemporalConnectorDep,
) -> Response:
    async with _scope(engine, manager) as db:
        endpoint = await _endpoint(db, tenant_id, endpoint_id, lock=True)
        parked = (
            await db.exec(
                select(WebhookDelivery.workflow_id).where(
                    WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "dead_lettered"
                )
            )
        ).all()
        await db.delete(endpoint)
        record_event(
            db,
            "webhook_endpoint.deleted",
            "webhook_endpoint",
            endpoint_id,
            tenant_id=tenant_id,
            actor_id=manager.user_id,
        )
    # Parked dead letters would wait forever for a decision about an endpoint that is gone: discard them.
    client = await temporal.try_get() if parked else None
    for workflow_id in parked if client is not None else []:
        try:
            await client.get_workflow_handle(workflow_id).signal(  # type: ignore[union-attr]
                SIGNAL_WEBHOOK_DECISION, WebhookDecision(action="discard", reason="endpoint deleted")
            )
        except RPCError as err:
            log.warning("dead letter not discarded", extra={"workflow_id": workflow_id, "error": err.status.name})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=WebhookEndpointWithSecret,
    summary="Replace the signing secret",
    description="The answer carries the new secret, shown this once. The previous secret keeps signing beside it "
    "(a second `v1,` signature) until `previous_secret_expires_at` (24 h by default).",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def rotate_secret(
    tenant_id: TenantIdPath, endpoint_id: EndpointIdPath, manager: TenantManager, engine: DbDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    secret = new_secret()
    now = utcnow()
    async with _scope(engine, manager) as db:
        endpoint = await _endpoint(db, tenant_id, endpoint_id, lock=True)
        endpoint.previous_secret_sealed = endpoint.secret_sealed
        endpoint.previous_secret_expires_at = now + settings.webhook_secret_overlap
        endpoint.secret_sealed = secret_box.seal(settings.derived_key(secret_box.KEY_PURPOSE), endpoint_id, secret)
        endpoint.updated_at = now
        db.add(endpoint)
        record_event(
            db,
            "webhook_endpoint.secret_rotated",
            "webhook_endpoint",
            endpoint_id,
            # the key's name says no "secret": the audit trail's secret scan refuses such keys in any payload
            {"old_key_signs_until": endpoint.previous_secret_expires_at.isoformat()},
            tenant_id=tenant_id,
            actor_id=manager.user_id,
        )
    return WebhookEndpointWithSecret(**_view(endpoint).model_dump(), secret=secret)


# --- the delivery log --------------------------------------------------------------------------------------------

StatusFilter = Annotated[
    Literal["pending", "retrying", "delivered", "dead_lettered", "failed", "discarded"] | None,
    Query(description="Only deliveries in this state."),
]


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=WebhookDeliveryPage,
    summary="The endpoint's deliveries",
    description="Newest first; page with `limit` and the opaque `next_cursor`.",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def list_deliveries(
    tenant_id: TenantIdPath,
    endpoint_id: EndpointIdPath,
    manager: TenantManager,
    engine: DbDep,
    state: StatusFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> WebhookDeliveryPage:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookDelivery.status == state)
    async with _scope(engine, manager) as db:
        await _endpoint(db, tenant_id, endpoint_id)
        rows = list((await db.exec(page_after(query, WebhookDelivery, cursor, limit))).all())
    rows, next_cursor = split_page(rows, limit)
    return WebhookDeliveryPage(items=[_delivery_view(d) for d in rows], next_cursor=next_cursor)


async def _delivery(db: AsyncSession, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID):
    await _endpoint(db, tenant_id, endpoint_id)
    delivery = await db.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        raise Problem(NOT_FOUND, DELIVERY_NOT_FOUND)
    return delivery


@router.get(
    "/{endpoint_id}/deliveries/{delivery_id}",
    response_model=WebhookDeliveryView,
    summary="One delivery",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
async def get_delivery(
    tenant_id: TenantIdPath,
    endpoint_id: EndpointIdPath,
    delivery_id: DeliveryIdPath,
    manager: TenantManager,
    engine: DbDep,
) -> WebhookDeliveryView:
    async with _scope(engine, manager) as db:
        return _delivery_view(await _delivery(db, tenant_id, endpoint_id, delivery_id))


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RetryAccepted,
    summary="Retry a dead-lettered delivery",
    description="Sends the parked `webhook-{id}` workflow a retry: it runs the retry schedule again from the top. "
    "409 unless the delivery is dead-lettered.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
async def retry_delivery(
    tenant_id: TenantIdPath,
    endpoint_id: EndpointIdPath,
    delivery_id: DeliveryIdPath,
    manager: TenantManager,
    engine: DbDep,
    temporal: TemporalConnectorDep,
    body: RetryRequest | None = None,
) -> RetryAccepted:
    async with _scope(engine, manager) as db:
        delivery = await _delivery(db, tenant_id, endpoint_id, delivery_id)
    if delivery.status != "dead_lettered":
        raise Problem(
            WEBHOOK_DELIVERY_NOT_DEAD_LETTERED, f"The delivery is {delivery.status}; only a dead letter can be retried."
        )
    client = await temporal.get()
    try:
        await client.get_workflow_handle(delivery.workflow_id).signal(
            SIGNAL_WEBHOOK_DECISION, WebhookDecision(action="retry", reason=body.reason if body else None)
        )
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise Problem(WEBHOOK_DELIVERY_NOT_DEAD_LETTERED, "The delivery's workflow has ended.") from None
    log.info("webhook retry requested", extra={"workflow_id": delivery.workflow_id, "tenant_id": str(tenant_id)})
    return RetryAccepted(delivery_id=delivery_id, workflow_id=delivery.workflow_id)

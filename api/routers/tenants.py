"""Tenants (organisations): start the provisioning saga, list the caller's tenants, show one.

Every read goes through `models.db.transaction` with the tenant and the caller set, so PostgreSQL's row-level
security decides what exists; a tenant the caller may not see is answered exactly like a missing one (404).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from temporalio.common import SearchAttributePair

from api.body_guard import require_json_body
from api.deps import (
    TENANT_NOT_FOUND,
    ConsistentAfter,
    CurrentUser,
    DbDep,
    ReadModelsDep,
    RedisDep,
    SettingsDep,
    TemporalConnectorDep,
    TenantIdPath,
)
from api.problems import NOT_FOUND, Problem, problem_responses
from api.saga_start import IdempotencyKey, SagaStart, request_fingerprint, request_key, start_saga
from api.schemas import (
    CreateTenantRequest,
    TenantAcceptedResponse,
    TenantLinks,
    TenantSummary,
    TenantView,
)
from models.contracts import SagaState, TenantAccepted, TenantProvisioningInput
from models.db import transaction
from models.names import (
    QUERY_SAGA_STATE,
    SA_TENANT_ID,
    SA_USER_ID,
    TENANT_PROVISIONING_WORKFLOW,
    UPDATE_TENANT_ACCEPTED,
    tenant_workflow_id,
)
from models.tables import Membership, Tenant

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Depends(require_json_body)])

SAGA_QUERY_TIMEOUT = timedelta(seconds=3)


def _accepted(tenant_id: uuid.UUID, workflow_id: str, state: str) -> TenantAcceptedResponse:
    return TenantAcceptedResponse(
        tenant_id=tenant_id,
        workflow_id=workflow_id,
        status=state,
        links=TenantLinks(self=f"/v1/tenants/{tenant_id}", workflow=f"/v1/workflows/{workflow_id}"),
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TenantAcceptedResponse,
    summary="Create a tenant (organisation)",
    description="Starts the tenant provisioning saga (`tenant-{tenant_id}`): tenant row, owner membership for the "
    "caller, Stripe customer, billing configuration, default settings, welcome email, active. Answers "
    "once the tenant row exists; a taken slug answers 409 synchronously. Follow progress at "
    "`links.self` (status and saga step) or `links.workflow`.",
    responses=problem_responses(400, 401, 409, 413, 415, 422, 503),
)
async def create_tenant(
    response: Response,
    body: CreateTenantRequest,
    caller: CurrentUser,
    engine: DbDep,
    redis: RedisDep,
    settings: SettingsDep,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> TenantAcceptedResponse:
    client = await temporal.get()
    fingerprint = request_fingerprint(body.slug, body.name)
    key = await request_key(redis, settings, idempotency_key, "tenant", caller.user_id, fingerprint=fingerprint)
    tenant_id = key.id()
    workflow_id = tenant_workflow_id(tenant_id)
    reply = await start_saga(
        client,
        SagaStart(
            workflow=TENANT_PROVISIONING_WORKFLOW,
            workflow_id=workflow_id,
            input=TenantProvisioningInput(
                tenant_id=tenant_id,
                name=body.name,
                slug=body.slug,
                owner_user_id=caller.user_id,
                billing_email=body.billing_email,
            ),
            fingerprint=fingerprint,
            reused_detail="This Idempotency-Key was already used to create a different tenant.",
            search_attributes=[
                SearchAttributePair(SA_TENANT_ID, str(tenant_id)),
                SearchAttributePair(SA_USER_ID, str(caller.user_id)),
            ],
            summary=f"Provisioning of tenant {tenant_id}",
            ids={"tenant_id": str(tenant_id)},
            location=f"/v1/tenants/{tenant_id}",
            links={"self": f"/v1/tenants/{tenant_id}", "workflow": f"/v1/workflows/{workflow_id}"},
        ),
        key,
        update=UPDATE_TENANT_ACCEPTED,
        result_type=TenantAccepted,
        response=response,
    )
    reply.raise_if_refused()  # a taken slug: 409
    if reply.answer is not None:
        log.info("tenant accepted", extra={"workflow_id": workflow_id, "tenant_id": str(tenant_id)})
        if reply.answer.status != "provisioning":
            return _accepted(tenant_id, workflow_id, reply.answer.status)
        # The row is activated by an activity before the saga has read its result: a repeated request between
        # the two must not answer `provisioning` after GET showed the tenant active.
        row_status = await _row_status(engine, tenant_id, caller.user_id)
        return _accepted(tenant_id, workflow_id, row_status or reply.answer.status)
    # The same Idempotency-Key as a saga that already ended: the tenant row says how.
    log.info("tenant replayed", extra={"workflow_id": workflow_id, "tenant_id": str(tenant_id)})
    return _accepted(tenant_id, workflow_id, await _row_status(engine, tenant_id, caller.user_id) or "unknown")


async def _row_status(engine: AsyncEngine, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    async with transaction(engine, tenant_id=tenant_id, user_id=user_id) as db:
        tenant = await db.get(Tenant, tenant_id)
    return tenant.status if tenant is not None else None


@router.get(
    "",
    response_model=list[TenantSummary],
    summary="The tenants you belong to, with your role",
    responses=problem_responses(401),
)
async def list_tenants(
    caller: CurrentUser, engine: DbDep, reads: ReadModelsDep, response: Response
) -> list[TenantSummary]:
    # Which tenants and with what role: the primary's memberships (access is never decided by a read model).
    async with transaction(engine, user_id=caller.user_id) as db:
        memberships = (await db.exec(select(Membership).where(Membership.user_id == caller.user_id))).all()
    roles = {m.tenant_id: m.role for m in memberships}
    rows: dict[uuid.UUID, dict] = await reads.tenant_summaries(caller.user_id, list(roles))
    missing = [t for t in roles if t not in rows]
    if missing:  # not projected yet: the write tables
        async with transaction(engine, user_id=caller.user_id) as db:
            for t in (await db.exec(select(Tenant).where(col(Tenant.id).in_(missing)))).all():
                rows[t.id] = t.model_dump()
    response.headers["Read-Source"] = "primary" if missing else "read-model"
    summaries = [
        TenantSummary(
            id=tenant_id,
            name=row["name"],
            slug=row["slug"],
            status=row["status"],
            role=roles[tenant_id],
            created_at=row["created_at"],
            activated_at=row["activated_at"],
        )
        for tenant_id, row in rows.items()
        if tenant_id in roles
    ]
    return sorted(summaries, key=lambda s: (s.created_at, str(s.id)))


async def _saga_state(temporal: TemporalConnectorDep, tenant_id: uuid.UUID) -> SagaState | None:
    """The provisioning saga's own state; None when the workflow cannot answer (never an error for the caller)."""
    try:
        client = await asyncio.wait_for(temporal.get(), SAGA_QUERY_TIMEOUT.total_seconds())
        handle = client.get_workflow_handle(tenant_workflow_id(tenant_id))
        return await handle.query(QUERY_SAGA_STATE, result_type=SagaState, rpc_timeout=SAGA_QUERY_TIMEOUT)
    except Exception:
        log.info("saga state unavailable", extra={"tenant_id": str(tenant_id)})
        return None


@router.get(
    "/{tenant_id}",
    response_model=TenantView,
    summary="One of your tenants",
    description="Status, your role, billing configuration and, while provisioning, the saga's current step. "
    "The creator also sees a tenant still provisioning or failed before it made them a member "
    "(`role` null), so the `failed` status and its reason are visible. Anyone else: 404.",
    responses=problem_responses(401, 404, 422),
)
async def get_tenant(
    tenant_id: TenantIdPath,
    caller: CurrentUser,
    engine: DbDep,
    reads: ReadModelsDep,
    temporal: TemporalConnectorDep,
    response: Response,
    consistent_after: ConsistentAfter = None,
) -> TenantView:
    # Access first, always on the primary: the cache and the read model answer only for a tenant the caller sees.
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        membership = await db.get(Membership, (tenant_id, caller.user_id))
        tenant = await db.get(Tenant, tenant_id) if membership is None else None
    creator_view = tenant is not None and tenant.created_by == caller.user_id and tenant.status != "active"
    if membership is None and not creator_view:
        raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
    found = await reads.tenant_overview(tenant_id, consistent_after)
    if found is None:
        raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
    overview, source = found
    response.headers["Read-Source"] = source
    saga = await _saga_state(temporal, tenant_id) if overview["status"] == "provisioning" else None
    show_billing = membership is not None
    return TenantView.model_validate(
        {
            **overview,
            "role": membership.role if membership else None,
            "billing": overview["billing"] if show_billing else None,
            "saga": saga,
        }
    )

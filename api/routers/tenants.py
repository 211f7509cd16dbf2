"""Tenants (organisations): start the provisioning saga, list the caller's tenants, show one.

Every read goes through `models.db.transaction` with the tenant and the caller set, so PostgreSQL's row-level
security decides what exists; a tenant the caller may not see is answered exactly like a missing one (404).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, status
from sqlmodel import select
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from api.body_guard import require_json_body
from api.deps import (
    TENANT_NOT_FOUND,
    CurrentUser,
    DbDep,
    TemporalConnectorDep,
    TenantIdPath,
)
from api.problems import (
    IDEMPOTENCY_KEY_REUSED,
    NOT_FOUND,
    SLUG_TAKEN,
    Problem,
    problem_responses,
)
from api.schemas import (
    CreateTenantRequest,
    TenantAcceptedResponse,
    TenantBillingView,
    TenantLinks,
    TenantSummary,
    TenantView,
)
from api.temporal_client import answer_within
from models.contracts import SagaState, TenantAccepted, TenantProvisioningInput
from models.db import transaction
from models.tables import Membership, Tenant, TenantBilling
from workflows.names import (
    QUERY_SAGA_STATE,
    SA_TENANT_ID,
    SA_USER_ID,
    TASK_QUEUE,
    TENANT_PROVISIONING_WORKFLOW,
    UPDATE_TENANT_ACCEPTED,
    tenant_workflow_id,
)

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Depends(require_json_body)])

# tenant_id = uuid5(IDEMPOTENCY_NAMESPACE, f"tenant:{caller}:{Idempotency-Key}"): a retry finds the same saga.
IDEMPOTENCY_NAMESPACE = uuid.UUID("0f6d2a8e-4b1c-5e7a-9d3f-2c8b6a4e1f09")
SLUG_TAKEN_ERROR = "SlugTaken"
SAGA_QUERY_TIMEOUT = timedelta(seconds=3)

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,255}$",
    description="Retry-safe key: the same key with the same body returns the same tenant.",
)]


def _is_slug_taken(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ApplicationError) and exc.type == SLUG_TAKEN_ERROR:
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
    return False


def _slug_taken() -> Problem:
    return Problem(SLUG_TAKEN, "Another tenant already uses this slug; choose another.")


def _accepted(tenant_id: uuid.UUID, workflow_id: str, state: str) -> TenantAcceptedResponse:
    return TenantAcceptedResponse(
        tenant_id=tenant_id, workflow_id=workflow_id, status=state,
        links=TenantLinks(self=f"/v1/tenants/{tenant_id}", workflow=f"/v1/workflows/{workflow_id}"),
    )


async def _replay_outcome(client: Client, workflow_id: str) -> None:
    """A saga under this Idempotency-Key already ended: raise 409 if it ended on a taken slug."""
    try:
        await client.get_workflow_handle(workflow_id).result()
    except WorkflowFailureError as exc:
        if _is_slug_taken(exc.cause):
            raise _slug_taken() from None


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=TenantAcceptedResponse,
    summary="Create a tenant (organisation)",
    description="Starts the tenant provisioning saga (`tenant-{tenant_id}`): tenant row, owner membership for the "
                "caller, Stripe customer, billing configuration, default settings, welcome email, active. Answers "
                "once the tenant row exists; a taken slug answers 409 synchronously. Follow progress at "
                "`links.self` (status and saga step) or `links.workflow`.",
    responses=problem_responses(400, 401, 409, 413, 415, 422, 503),
)
async def create_tenant(body: CreateTenantRequest, caller: CurrentUser, engine: DbDep,
                        temporal: TemporalConnectorDep, idempotency_key: IdempotencyKey = None) -> TenantAcceptedResponse:
    client = await temporal.get()
    tenant_id = (uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"tenant:{caller.user_id}:{idempotency_key}")
                 if idempotency_key else uuid.uuid4())
    workflow_id = tenant_workflow_id(tenant_id)
    operation = WithStartWorkflowOperation(
        TENANT_PROVISIONING_WORKFLOW,
        TenantProvisioningInput(tenant_id=tenant_id, name=body.name, slug=body.slug, owner_user_id=caller.user_id,
                                billing_email=body.billing_email),
        id=workflow_id, task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(SA_TENANT_ID, str(tenant_id)), SearchAttributePair(SA_USER_ID, str(caller.user_id)),
        ]),
        static_summary=f"Provisioning of tenant {tenant_id}",
    )
    replayed = False
    try:
        accepted: TenantAccepted = await answer_within(client.execute_update_with_start_workflow(
            UPDATE_TENANT_ACCEPTED, start_workflow_operation=operation, result_type=TenantAccepted,
        ))
        state = accepted.status
    except WorkflowUpdateFailedError as exc:
        if _is_slug_taken(exc.cause):
            log.info("tenant refused: slug taken", extra={"workflow_id": workflow_id})
            raise _slug_taken() from None
        raise
    except WorkflowAlreadyStartedError:
        await _replay_outcome(client, workflow_id)  # same Idempotency-Key as a saga that already ended
        replayed, state = True, "unknown"

    if idempotency_key:
        async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
            tenant = await db.get(Tenant, tenant_id)
        if tenant is not None:
            if (tenant.slug, tenant.name) != (body.slug, body.name):
                raise Problem(IDEMPOTENCY_KEY_REUSED,
                              "This Idempotency-Key was already used to create a different tenant.")
            state = tenant.status if replayed else state
    log.info("tenant accepted" if not replayed else "tenant replayed",
             extra={"workflow_id": workflow_id, "tenant_id": str(tenant_id)})
    return _accepted(tenant_id, workflow_id, state)


@router.get("", response_model=list[TenantSummary], summary="The tenants you belong to, with your role",
            responses=problem_responses(401))
async def list_tenants(caller: CurrentUser, engine: DbDep) -> list[TenantSummary]:
    async with transaction(engine, user_id=caller.user_id) as db:
        rows = (await db.exec(
            select(Tenant, Membership.role)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == caller.user_id)
            .order_by(Tenant.created_at, Tenant.id)
        )).all()
    return [TenantSummary(id=t.id, name=t.name, slug=t.slug, status=t.status, role=role, created_at=t.created_at,
                          activated_at=t.activated_at) for t, role in rows]


async def _saga_state(temporal: TemporalConnectorDep, tenant_id: uuid.UUID) -> SagaState | None:
    """The provisioning saga's own state; None when the workflow cannot answer (never an error for the caller)."""
    try:
        client = await asyncio.wait_for(temporal.get(), SAGA_QUERY_TIMEOUT.total_seconds())
        handle = client.get_workflow_handle(tenant_workflow_id(tenant_id))
        return await handle.query(QUERY_SAGA_STATE, result_type=SagaState, rpc_timeout=SAGA_QUERY_TIMEOUT)
    except Exception:  # noqa: BLE001 - query failed, rejected, timed out or Temporal is down
        log.info("saga state unavailable", extra={"tenant_id": str(tenant_id)})
        return None


@router.get(
    "/{tenant_id}", response_model=TenantView, summary="One of your tenants",
    description="Status, your role, billing configuration and, while provisioning, the saga's current step. "
                "The creator also sees a tenant still provisioning or failed before it made them a member "
                "(`role` null), so the `failed` status and its reason are visible. Anyone else: 404.",
    responses=problem_responses(401, 404, 422),
)
async def get_tenant(tenant_id: TenantIdPath, caller: CurrentUser, engine: DbDep,
                     temporal: TemporalConnectorDep) -> TenantView:
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        tenant = await db.get(Tenant, tenant_id)
        membership = await db.get(Membership, (tenant_id, caller.user_id))
        billing = await db.get(TenantBilling, tenant_id) if membership is not None else None
    creator_view = (tenant is not None and membership is None and tenant.created_by == caller.user_id
                    and tenant.status != "active")
    if tenant is None or (membership is None and not creator_view):
        raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
    saga = await _saga_state(temporal, tenant_id) if tenant.status == "provisioning" else None
    return TenantView(
        id=tenant.id, name=tenant.name, slug=tenant.slug, status=tenant.status, failure_reason=tenant.failure_reason,
        role=membership.role if membership else None, created_at=tenant.created_at, activated_at=tenant.activated_at,
        billing=TenantBillingView(currency=billing.currency, billing_email=billing.billing_email,
                                  stripe_customer_id=billing.stripe_customer_id) if billing else None,
        saga=saga,
    )

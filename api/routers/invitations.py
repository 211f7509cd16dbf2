"""Invitations: owners and admins invite by email (the `Invitation` saga), list and revoke (accepting is in
`api.routers.invitation_accept`).

The saga creates the invitation row and emails `<public_base_url>/accept-invitation?token=<tenant id>.<secret>`.
The token's tenant part lets the API open that tenant's rows (row-level security) to find the invitation by
the token's SHA-256. Email addresses never appear in workflow ids, search attributes or logs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import SearchAttributePair
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import DbDep, RedisDep, SettingsDep, TemporalConnectorDep, TenantIdPath, TenantManager
from api.problems import (
    ALREADY_A_MEMBER,
    INVITATION_ALREADY_ACCEPTED,
    NOT_FOUND,
    TENANT_NOT_ACTIVE,
    Problem,
    problem_responses,
)
from api.saga_start import (
    IdempotencyKey,
    SagaReply,
    SagaStart,
    earlier_start,
    request_fingerprint,
    request_key,
    start_saga,
)
from api.schemas import (
    CreateInvitationRequest,
    InvitationAcceptedResponse,
    InvitationLinks,
    InvitationStatus,
    InvitationView,
)
from models.contracts import InvitationInput
from models.db import transaction
from models.names import (
    INVITATION_WORKFLOW,
    SA_TENANT_ID,
    SA_USER_ID,
    SIGNAL_REVOKE_INVITATION,
    invitation_workflow_id,
)
from models.tables import Invitation, Membership, Tenant, User

log = logging.getLogger("prognet.api")

router = APIRouter(tags=["invitations"], dependencies=[Depends(require_json_body)])

REVOKE_RESULT_TIMEOUT_SECONDS = 5.0
INVITATION_NOT_FOUND = "No invitation with this id in this tenant."

InvitationIdPath = Annotated[uuid.UUID, Path(description="The invitation's id.")]


def _view(inv: Invitation) -> InvitationView:
    return InvitationView(
        id=inv.id,
        email=inv.email,
        role=inv.role,
        status=inv.status,
        expires_at=inv.expires_at,
        created_at=inv.created_at,
    )


def _accepted(tenant_id: uuid.UUID, invitation_id: uuid.UUID, state: str) -> InvitationAcceptedResponse:
    workflow_id = invitation_workflow_id(invitation_id)
    return InvitationAcceptedResponse(
        invitation_id=invitation_id,
        workflow_id=workflow_id,
        status=state,
        links=InvitationLinks(
            self=f"/v1/tenants/{tenant_id}/invitations/{invitation_id}", workflow=f"/v1/workflows/{workflow_id}"
        ),
    )


async def _status(engine, tenant_id: uuid.UUID, invitation_id: uuid.UUID, caller_id: uuid.UUID, running: bool) -> str:
    """Of an invitation an earlier request under the same Idempotency-Key started. Its saga writes the row:
    none yet while it runs means pending; none after it ended means it was revoked before being stored."""
    async with transaction(engine, tenant_id=tenant_id, user_id=caller_id) as db:
        row = await db.get(Invitation, invitation_id)
    return row.status if row is not None else "pending" if running else "revoked"


async def _revoke(client: Client, invitation_id: uuid.UUID) -> bool:
    """Signal revoke; False if the saga has already ended."""
    try:
        await client.get_workflow_handle(invitation_workflow_id(invitation_id)).signal(SIGNAL_REVOKE_INVITATION)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@router.post(
    "/v1/tenants/{tenant_id}/invitations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=InvitationAcceptedResponse,
    summary="Invite someone to a tenant by email",
    description="Owners and admins of an active tenant. Starts the invitation saga (`invitation-{id}`), which "
    "stores the invitation, emails its link and waits for acceptance until `INVITATION_TIMEOUT` "
    "(7 days). Inviting an email again revokes its older pending invitations. An email that already "
    "belongs to a member answers 409 `already-a-member`.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
async def invite(
    response: Response,
    tenant_id: TenantIdPath,
    body: CreateInvitationRequest,
    manager: TenantManager,
    engine: DbDep,
    settings: SettingsDep,
    redis: RedisDep,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> InvitationAcceptedResponse:
    email = body.email.strip()
    fingerprint = request_fingerprint(email.lower(), body.role)
    key = await request_key(
        redis, settings, idempotency_key, "invitation", tenant_id, manager.user_id, fingerprint=fingerprint
    )
    invitation_id = key.id()
    workflow_id = invitation_workflow_id(invitation_id)
    saga = SagaStart(
        workflow=INVITATION_WORKFLOW,
        workflow_id=workflow_id,
        input=InvitationInput(
            invitation_id=invitation_id,
            tenant_id=tenant_id,
            email=email,
            role=body.role,
            invited_by=manager.user_id,
            expires_in_seconds=int(settings.invitation_timeout.total_seconds()),
        ),
        fingerprint=fingerprint,
        reused_detail="This Idempotency-Key was already used for another invitation.",
        search_attributes=[
            SearchAttributePair(SA_TENANT_ID, str(tenant_id)),
            SearchAttributePair(SA_USER_ID, str(manager.user_id)),
        ],  # the inviter follows it
        summary=f"Invitation {invitation_id} to tenant {tenant_id}",
        ids={"invitation_id": str(invitation_id)},
        location=f"/v1/tenants/{tenant_id}/invitations/{invitation_id}",
        links={
            "self": f"/v1/tenants/{tenant_id}/invitations/{invitation_id}",
            "workflow": f"/v1/workflows/{workflow_id}",
        },
    )
    if key.may_name_earlier:
        client = await temporal.get()
        earlier = await earlier_start(client, saga)
        if earlier is not None:  # replayed Idempotency-Key: nothing new to send or revoke
            running = earlier.status == WorkflowExecutionStatus.RUNNING
            response.headers["Location"] = saga.location  # as the first answer had it
            return _accepted(
                tenant_id, invitation_id, await _status(engine, tenant_id, invitation_id, manager.user_id, running)
            )
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        tenant = await db.get(Tenant, tenant_id)
        if tenant is None or tenant.status != "active":
            raise Problem(TENANT_NOT_ACTIVE, "Invitations can be sent once the tenant is active.")
        member = (
            await db.exec(
                select(Membership.user_id)
                .join(User, col(User.id) == Membership.user_id)
                .where(Membership.tenant_id == tenant_id, func.lower(User.email) == email.lower())
            )
        ).first()
        if member is not None:
            raise Problem(ALREADY_A_MEMBER, "This email address already belongs to a member of this tenant.")
        older = (
            await db.exec(
                select(Invitation.id).where(
                    Invitation.tenant_id == tenant_id,
                    func.lower(Invitation.email) == email.lower(),
                    Invitation.status == "pending",
                    Invitation.id != invitation_id,
                )
            )
        ).all()

    client = await temporal.get()
    reply: SagaReply[None] = await start_saga(client, saga, key, response=response)  # no update: no answer
    if reply.closed:  # the same Idempotency-Key, and that saga ended meanwhile
        return _accepted(
            tenant_id, invitation_id, await _status(engine, tenant_id, invitation_id, manager.user_id, running=False)
        )
    revoked = [old for old in older if await _revoke(client, old)]
    log.info(
        "invitation started",
        extra={"workflow_id": workflow_id, "tenant_id": str(tenant_id), "revoked": [str(r) for r in revoked]},
    )
    return _accepted(tenant_id, invitation_id, "pending")


@router.get(
    "/v1/tenants/{tenant_id}/invitations",
    response_model=list[InvitationView],
    summary="Invitations of a tenant",
    description="Owners and admins; newest first.",
    responses=problem_responses(401, 403, 404, 422),
)
async def list_invitations(
    tenant_id: TenantIdPath,
    manager: TenantManager,
    engine: DbDep,
    status_filter: Annotated[InvitationStatus | None, Query(alias="status")] = None,
) -> list[InvitationView]:
    query = select(Invitation).where(Invitation.tenant_id == tenant_id)
    if status_filter:
        query = query.where(Invitation.status == status_filter)
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        rows = (await db.exec(query.order_by(col(Invitation.created_at).desc(), col(Invitation.id)))).all()
    return [_view(inv) for inv in rows]


async def _invitation(engine, tenant_id: uuid.UUID, invitation_id: uuid.UUID, caller_id: uuid.UUID) -> Invitation:
    async with transaction(engine, tenant_id=tenant_id, user_id=caller_id) as db:
        inv = await db.get(Invitation, invitation_id)
    if inv is None or inv.tenant_id != tenant_id:
        raise Problem(NOT_FOUND, INVITATION_NOT_FOUND)
    return inv


@router.get(
    "/v1/tenants/{tenant_id}/invitations/{invitation_id}",
    response_model=InvitationView,
    summary="One invitation",
    description="Owners and admins.",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_invitation(
    tenant_id: TenantIdPath, invitation_id: InvitationIdPath, manager: TenantManager, engine: DbDep
) -> InvitationView:
    return _view(await _invitation(engine, tenant_id, invitation_id, manager.user_id))


@router.delete(
    "/v1/tenants/{tenant_id}/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke an invitation",
    description="Owners and admins. Signals the invitation saga to revoke (waits up to 5 s for it to close the "
    "invitation). Revoking an invitation that is already revoked or expired is a no-op; an accepted "
    "one answers 409 (remove the member instead).",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def revoke_invitation(
    tenant_id: TenantIdPath,
    invitation_id: InvitationIdPath,
    manager: TenantManager,
    engine: DbDep,
    temporal: TemporalConnectorDep,
) -> Response:
    inv = await _invitation(engine, tenant_id, invitation_id, manager.user_id)
    if inv.status == "accepted":
        raise Problem(INVITATION_ALREADY_ACCEPTED, "This invitation was accepted; remove the member instead.")
    if inv.status == "pending":
        client = await temporal.get()
        if await _revoke(client, invitation_id):
            handle = client.get_workflow_handle(invitation_workflow_id(invitation_id))
            try:
                await asyncio.wait_for(handle.result(), REVOKE_RESULT_TIMEOUT_SECONDS)
            except (TimeoutError, WorkflowFailureError):
                pass  # revoked is signalled; the saga closes the row when it gets there
        log.info("invitation revoked", extra={"tenant_id": str(tenant_id), "invitation_id": str(invitation_id)})
    return Response(status_code=status.HTTP_204_NO_CONTENT)

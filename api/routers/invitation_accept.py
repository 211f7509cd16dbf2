"""Accepting an invitation: the logged-in invitee hands in the emailed token.

The token's tenant part (`<tenant id>.<secret>`) opens that tenant's rows (row-level security), where the
invitation is found by the token's SHA-256; the caller's verified email must match the invitation's. The
invitation saga then adds the membership.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Response, status
from sqlmodel import select
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import CurrentUser, DbDep, TemporalConnectorDep
from api.problems import (
    ACCOUNT_NOT_VERIFIED,
    ALREADY_A_MEMBER,
    INVALID_TOKEN,
    INVITATION_ALREADY_ACCEPTED,
    INVITATION_EMAIL_MISMATCH,
    INVITATION_EXPIRED,
    Problem,
    problem_responses,
)
from api.schemas import AcceptInvitationRequest, InvitationAcceptResponse
from models.contracts import AcceptInvitation, InvitationResult
from models.db import transaction
from models.names import SIGNAL_ACCEPT_INVITATION, invitation_workflow_id
from models.tables import Invitation, Membership, User
from prognet import tokens

log = logging.getLogger("prognet.api")

router = APIRouter(tags=["invitations"], dependencies=[Depends(require_json_body)])

ACCEPT_RESULT_TIMEOUT_SECONDS = 15.0


@router.post(
    "/v1/invitations/accept",
    response_model=InvitationAcceptResponse,
    summary="Accept an invitation",
    description="The logged-in caller's verified email must match the invitation's (case-insensitively). "
    "200 once the membership exists; 202 (`accepting`) if the saga has not finished within 15 s.",
    responses={
        **problem_responses(400, 401, 403, 409, 410, 413, 415, 422, 503),
        202: {"model": InvitationAcceptResponse, "description": "Accepted, membership still being added."},
    },
)
async def accept_invitation(
    body: AcceptInvitationRequest,
    caller: CurrentUser,
    engine: DbDep,
    temporal: TemporalConnectorDep,
    response: Response,
) -> InvitationAcceptResponse:
    invalid = Problem(INVALID_TOKEN, "This invitation token is not valid.")
    tenant_id = tokens.tenant_of_invitation_token(body.token)
    if tenant_id is None:
        raise invalid
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        inv = (
            await db.exec(
                select(Invitation).where(
                    Invitation.tenant_id == tenant_id, Invitation.token_hash == tokens.hash_token(body.token)
                )
            )
        ).first()
        user = await db.get(User, caller.user_id)
        already_member = await db.get(Membership, (tenant_id, caller.user_id)) is not None
    if inv is None:
        raise invalid
    if inv.status == "accepted":
        raise Problem(INVITATION_ALREADY_ACCEPTED, "This invitation was already accepted.")
    expired = Problem(INVITATION_EXPIRED, "This invitation has expired or was revoked; ask for a new one.")
    if inv.status != "pending" or inv.expires_at <= datetime.now(UTC):
        raise expired
    if user is None or (user.verified_at is None and user.status != "active"):
        raise Problem(ACCOUNT_NOT_VERIFIED, "Verify your email address before accepting invitations.")
    if user.email.strip().lower() != inv.email.strip().lower():
        raise Problem(
            INVITATION_EMAIL_MISMATCH, "This invitation was sent to another email address; log in with that account."
        )
    if already_member:
        raise Problem(ALREADY_A_MEMBER, "You are already a member of this tenant.")

    client = await temporal.get()
    handle = client.get_workflow_handle(invitation_workflow_id(inv.id), result_type=InvitationResult)
    try:
        await handle.signal(SIGNAL_ACCEPT_INVITATION, AcceptInvitation(user_id=caller.user_id))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # the saga already ended (expired or revoked)
            raise expired from None
        raise
    try:
        result = await asyncio.wait_for(handle.result(), ACCEPT_RESULT_TIMEOUT_SECONDS)
    except TimeoutError:
        response.status_code = status.HTTP_202_ACCEPTED
        return InvitationAcceptResponse(tenant_id=tenant_id, role=inv.role, status="accepting")
    except WorkflowFailureError:
        raise expired from None
    if result.status != "accepted":
        raise expired
    if result.user_id != caller.user_id:
        raise Problem(INVITATION_ALREADY_ACCEPTED, "This invitation was already accepted.")
    log.info(
        "invitation accepted",
        extra={"tenant_id": str(tenant_id), "invitation_id": str(inv.id), "user_id": str(caller.user_id)},
    )
    return InvitationAcceptResponse(tenant_id=tenant_id, role=inv.role, status="accepted")

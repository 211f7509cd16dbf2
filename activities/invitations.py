"""Invitations: the invitation row (only the token's hash is stored), acceptance into a membership, closing.

The token is `<tenant id>.<secret>`, the secret derived from the invitation id with a server key (see
prognet.tokens), so workflow history carries neither the token nor its hash.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models import activity_names as names
from models.contracts import CloseInvitation, CompleteInvitation, IssueInvitation
from models.db import transaction
from models.errors import INVITATION_CLOSED, INVITATION_NOT_FOUND
from models.events import record_event
from models.tables import Invitation, Membership, utcnow
from prognet.tokens import hash_token, invitation_token


class InvitationActivities:
    def __init__(self, engine: AsyncEngine, token_key: bytes) -> None:
        self.engine = engine
        self.token_key = token_key

    @activity.defn(name=names.ISSUE_INVITATION)
    async def issue_invitation(self, req: IssueInvitation) -> None:
        token = invitation_token(self.token_key, req.tenant_id, req.invitation_id)
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            if await session.get(Invitation, req.invitation_id) is not None:
                return
            session.add(
                Invitation(
                    id=req.invitation_id,
                    tenant_id=req.tenant_id,
                    email=req.email,
                    role=req.role,
                    status="pending",
                    token_hash=hash_token(token),
                    invited_by=req.invited_by,
                    expires_at=req.expires_at,
                )
            )
            record_event(
                session,
                "invitation.created",
                "invitation",
                req.invitation_id,
                {"role": req.role},
                tenant_id=req.tenant_id,
            )

    @activity.defn(name=names.COMPLETE_INVITATION)
    async def complete_invitation(self, req: CompleteInvitation) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            invitation = await session.get(Invitation, req.invitation_id, with_for_update=True)
            if invitation is None:
                raise ApplicationError("invitation not found", type=INVITATION_NOT_FOUND, non_retryable=True)
            if invitation.status == "accepted":
                return
            if invitation.status != "pending":
                raise ApplicationError(f"invitation is {invitation.status}", type=INVITATION_CLOSED, non_retryable=True)
            await session.exec(
                insert(Membership)
                .values(tenant_id=req.tenant_id, user_id=req.user_id, role=invitation.role)
                .on_conflict_do_nothing()
            )
            invitation.status = "accepted"
            invitation.accepted_by = req.user_id
            invitation.closed_at = utcnow()
            session.add(invitation)
            record_event(
                session,
                "invitation.accepted",
                "invitation",
                req.invitation_id,
                {"user_id": str(req.user_id), "role": invitation.role},
                tenant_id=req.tenant_id,
                workflow_id=req.workflow_id,
                user_id=req.user_id,
                actor_id=req.user_id,
            )
            record_event(
                session,
                "member.added",
                "membership",
                req.user_id,
                {"role": invitation.role},
                tenant_id=req.tenant_id,
                workflow_id=req.workflow_id,
                user_id=req.user_id,
            )

    @activity.defn(name=names.CLOSE_INVITATION)
    async def close_invitation(self, req: CloseInvitation) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            result = await session.exec(
                update(Invitation)
                .where(col(Invitation.id) == req.invitation_id, col(Invitation.status) == "pending")
                .values(status=req.status, closed_at=utcnow())
            )
            if result.rowcount:
                record_event(
                    session, f"invitation.{req.status}", "invitation", req.invitation_id, {}, tenant_id=req.tenant_id
                )

"""Users aggregate: pending users, verification tokens, activation. Each change writes its domain event
in the same transaction. Every activity is idempotent: Temporal may run it again after a crash."""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import verification_tokens
from activities.email_change import email_in_use
from models import activity_names as names
from models.contracts import ActivateUser, CreatePendingUser, IssueVerificationToken, TokenRef, UserRef
from models.db import transaction
from models.errors import EMAIL_TAKEN, USER_NOT_FOUND
from models.events import record_event
from models.tables import User, VerificationToken, utcnow
from prognet.tokens import VERIFY_EMAIL

log = logging.getLogger(__name__)


class UserActivities:
    def __init__(self, engine: AsyncEngine, token_key: bytes) -> None:
        self.engine = engine
        self.token_key = token_key  # derives verification tokens; see prognet.tokens

    @activity.defn(name=names.CREATE_PENDING_USER)
    async def create_pending_user(self, req: CreatePendingUser) -> None:
        try:
            async with transaction(self.engine) as session:
                if await session.get(User, req.user_id) is not None:
                    return  # a retry after the row was committed
                if await email_in_use(session, req.email):  # a user's, or reserved by a pending email change
                    raise ApplicationError("email already registered", type=EMAIL_TAKEN, non_retryable=True)
                session.add(
                    User(
                        id=req.user_id,
                        email=req.email,
                        display_name=req.display_name,
                        password_hash=req.password_hash,
                        status="pending",
                    )
                )
                record_event(
                    session,
                    "user.registered",
                    "user",
                    req.user_id,
                    {"status": "pending", "email": req.email, "display_name": req.display_name},
                    workflow_id=req.workflow_id,
                )
        except IntegrityError:
            # Lost a race with a concurrent registration of the same email.
            raise ApplicationError("email already registered", type=EMAIL_TAKEN, non_retryable=True) from None
        log.info("pending user created", extra={"user_id": str(req.user_id), "workflow_id": req.workflow_id})

    @activity.defn(name=names.DELETE_PENDING_USER)
    async def delete_pending_user(self, req: UserRef) -> None:
        """Compensation: removes the user only while still pending, releasing the email. No-op if absent."""
        async with transaction(self.engine) as session:
            user = await session.get(User, req.user_id)
            if user is None or user.status != "pending":
                return
            await session.delete(user)
            record_event(session, "user.registration_expired", "user", req.user_id, {}, workflow_id=req.workflow_id)

    @activity.defn(name=names.ISSUE_VERIFICATION_TOKEN)
    async def issue_verification_token(self, req: IssueVerificationToken) -> None:
        async with transaction(self.engine) as session:
            await verification_tokens.issue(
                session, self.token_key, VERIFY_EMAIL, req.token_id, req.user_id, req.expires_at
            )

    @activity.defn(name=names.REVOKE_VERIFICATION_TOKEN)
    async def revoke_verification_token(self, req: TokenRef) -> None:
        async with transaction(self.engine) as session:
            await session.exec(
                update(VerificationToken)
                .where(col(VerificationToken.id) == req.token_id, col(VerificationToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )

    @activity.defn(name=names.ACTIVATE_USER)
    async def activate_user(self, req: ActivateUser) -> None:
        async with transaction(self.engine) as session:
            user = await session.get(User, req.user_id, with_for_update=True)
            if user is None:
                raise ApplicationError("user vanished before activation", type=USER_NOT_FOUND, non_retryable=True)
            if user.status == "active":
                return
            now = utcnow()
            await session.exec(
                update(VerificationToken).where(col(VerificationToken.id) == req.token_id).values(used_at=now)
            )
            user.status = "active"
            user.verified_at = now
            session.add(user)
            record_event(session, "user.verified", "user", req.user_id, {}, workflow_id=req.workflow_id)

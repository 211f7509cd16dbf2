"""Email change aggregate: reserve the new address, its verification token, the swap, the release.

An address is in use while a user has it or a pending email change reserves it. Both checks (here and at
registration, `email_in_use`) take a transaction-scoped advisory lock on the lower-cased address first, so a
registration and a reservation of the same address cannot both pass their checks concurrently.
Every activity is idempotent: Temporal may run it again after a crash.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import verification_tokens
from models import activity_names as names
from models.contracts import EmailChangeToken, ReleaseEmailChange, ReserveEmailChange, SwapEmail
from models.db import transaction
from models.errors import EMAIL_CHANGE_GONE, EMAIL_TAKEN
from models.events import record_event
from models.tables import EmailChange, User, VerificationToken, utcnow
from prognet.tokens import CHANGE_EMAIL

log = logging.getLogger(__name__)


async def email_in_use(session: AsyncSession, email: str, *, change_id: uuid.UUID | None = None) -> bool:
    """Whether a user has `email` or a pending change (other than `change_id`) reserves it. Locks the address
    until the caller's transaction ends."""
    address = email.lower()
    connection = await session.connection()
    await connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('email:' || :address))"), {"address": address})
    if (await session.exec(select(User.id).where(func.lower(User.email) == address))).first() is not None:
        return True
    reserved = select(EmailChange.id).where(
        func.lower(EmailChange.new_email) == address, EmailChange.status == "pending"
    )
    if change_id is not None:
        reserved = reserved.where(EmailChange.id != change_id)
    return (await session.exec(reserved)).first() is not None


def _taken() -> ApplicationError:
    return ApplicationError("email already registered", type=EMAIL_TAKEN, non_retryable=True)


class EmailChangeActivities:
    def __init__(self, engine: AsyncEngine, token_key: bytes) -> None:
        self.engine = engine
        self.token_key = token_key

    @activity.defn(name=names.RESERVE_EMAIL_CHANGE)
    async def reserve(self, req: ReserveEmailChange) -> None:
        """Reserve the address for this change; an older pending change of the same user is superseded."""
        try:
            async with transaction(self.engine, user_id=req.user_id) as session:
                if await session.get(EmailChange, req.change_id) is not None:
                    return  # a retry after the row was committed
                if await email_in_use(session, req.new_email):
                    raise _taken()
                older = (
                    await session.exec(
                        select(EmailChange).where(EmailChange.user_id == req.user_id, EmailChange.status == "pending")
                    )
                ).all()
                for change in older:
                    change.status, change.closed_at = "superseded", utcnow()
                    session.add(change)
                    await session.exec(
                        update(VerificationToken)
                        .where(
                            col(VerificationToken.id) == change.token_id, col(VerificationToken.revoked_at).is_(None)
                        )
                        .values(revoked_at=utcnow())
                    )
                session.add(
                    EmailChange(
                        id=req.change_id,
                        user_id=req.user_id,
                        new_email=req.new_email,
                        token_id=req.token_id,
                        status="pending",
                    )
                )
                record_event(
                    session,
                    "user.email_change_requested",
                    "user",
                    req.user_id,
                    {"change_id": str(req.change_id), "superseded": [str(c.id) for c in older]},
                    actor_id=req.user_id,
                    workflow_id=req.workflow_id,
                )
        except IntegrityError:  # lost a race the lock did not cover (the pending index is the last word)
            raise _taken() from None

    @activity.defn(name=names.ISSUE_EMAIL_CHANGE_TOKEN)
    async def issue_token(self, req: EmailChangeToken) -> None:
        async with transaction(self.engine, user_id=req.user_id) as session:
            await verification_tokens.issue(
                session, self.token_key, CHANGE_EMAIL, req.token_id, req.user_id, req.expires_at
            )

    @activity.defn(name=names.RELEASE_EMAIL_CHANGE)
    async def release(self, req: ReleaseEmailChange) -> None:
        """Compensation: the address is free again. No-op unless the change is still pending."""
        async with transaction(self.engine, user_id=req.user_id) as session:
            change = await session.get(EmailChange, req.change_id, with_for_update=True)
            if change is None or change.status != "pending":
                return
            change.status, change.closed_at = req.reason, utcnow()
            session.add(change)
            record_event(
                session,
                f"user.email_change_{req.reason}",
                "user",
                req.user_id,
                {"change_id": str(req.change_id)},
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=names.SWAP_EMAIL)
    async def swap_email(self, req: SwapEmail) -> None:
        """The pivot: the account's address becomes the verified new one; the old one is kept on the change
        for the notice."""
        try:
            async with transaction(self.engine, user_id=req.user_id) as session:
                change = await session.get(EmailChange, req.change_id, with_for_update=True)
                if change is not None and change.status == "completed":
                    return  # a retry after the swap was committed
                if change is None or change.status != "pending" or change.token_id != req.token_id:
                    raise ApplicationError(
                        "the email change is no longer pending", type=EMAIL_CHANGE_GONE, non_retryable=True
                    )
                user = await session.get(User, req.user_id, with_for_update=True)
                if user is None:
                    raise ApplicationError("the user no longer exists", type=EMAIL_CHANGE_GONE, non_retryable=True)
                if await email_in_use(session, change.new_email, change_id=change.id):
                    raise _taken()
                now = utcnow()
                change.old_email, change.status, change.closed_at = user.email, "completed", now
                user.email = change.new_email
                session.add(change)
                session.add(user)
                await session.exec(
                    update(VerificationToken).where(col(VerificationToken.id) == req.token_id).values(used_at=now)
                )
                record_event(
                    session,
                    "user.email_changed",
                    "user",
                    req.user_id,
                    {"change_id": str(req.change_id), "email": change.new_email},
                    actor_id=req.user_id,
                    workflow_id=req.workflow_id,
                )
        except IntegrityError:
            raise _taken() from None
        log.info("email changed", extra={"user_id": str(req.user_id), "workflow_id": req.workflow_id})

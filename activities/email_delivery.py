"""The email delivery pipeline's activities: queue (track + suppression check), send, mark, suppress.

Tracking rows live in `email_messages`; a platform message (tenant_id NULL) is handled in the platform
scope, a tenant's message in its tenant's (row-level security, see models.db.transaction).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

from redis.exceptions import RedisError
from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email import Accepted, Composer, SmtpTemporaryFailure, build_message, smtp_send
from models import activity_names as names
from models.contracts import (
    EmailDelivery,
    EmailPolicy,
    EmailQueued,
    EmailRequest,
    MarkEmail,
    SendEmail,
    SuppressAddress,
)
from models.db import transaction
from models.errors import SEND_RATE_UNAVAILABLE
from models.events import record_event
from models.names import email_workflow_id
from models.tables import EmailMessage, EmailSuppression, utcnow
from prognet.circuit import CircuitBreaker, CircuitOpenError
from prognet.metrics import EMAILS
from prognet.send_rate import SendRateLimiter
from prognet.settings import Settings

log = logging.getLogger(__name__)
REPLY_LIMIT = 500


def _reply(err: Exception) -> str:
    """The relay's full reply (kept in the tracking row only), else the error's own message."""
    return str(getattr(err, "reply", None) or err)[:REPLY_LIMIT]


def message_id_header(message_id: uuid.UUID) -> str:
    return f"<{message_id}@prognet>"


class EmailDeliveryActivities:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        breaker: CircuitBreaker | None = None,
        send_rate: SendRateLimiter | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.composer = Composer(engine, settings)
        self.breaker = breaker  # the "smtp" circuit
        self.send_rate = send_rate  # EMAIL_MAX_PER_SECOND at the moment of sending; None: no limit (tests only)

    def _scope(self, tenant_id: uuid.UUID | None):
        return transaction(self.engine, tenant_id=tenant_id, platform=tenant_id is None)

    def _policy(self) -> EmailPolicy:
        s = self.settings
        return EmailPolicy(
            initial_interval_seconds=s.email_retry_initial_seconds,
            backoff_coefficient=s.email_retry_backoff_coefficient,
            maximum_interval_seconds=s.email_retry_max_interval_seconds,
            maximum_attempts=s.email_retry_max_attempts,
            send_timeout_seconds=s.smtp_timeout_seconds,
        )

    @activity.defn(name=names.QUEUE_EMAIL)
    async def queue(self, req: EmailRequest) -> EmailQueued:
        """Resolve the recipient, render once (a broken template fails here, permanently), record the message;
        with the send's retry policy (the worker's settings), so the workflow needs no step of its own to read it."""
        composed = await self.composer.compose(req, req.to_address)
        async with self._scope(req.tenant_id) as session:
            existing = await session.get(EmailMessage, req.message_id)
            if existing is not None:  # a retry after the row was committed
                return EmailQueued(
                    message_id=req.message_id,
                    to_address=existing.to_address,
                    policy=self._policy(),
                    suppressed=existing.state == "suppressed",
                )
            suppressed = (
                await session.exec(
                    select(EmailSuppression.id).where(
                        col(EmailSuppression.tenant_id) == req.tenant_id
                        if req.tenant_id
                        else col(EmailSuppression.tenant_id).is_(None),
                        func.lower(EmailSuppression.address) == composed.to_address.lower(),
                    )
                )
            ).first() is not None
            session.add(
                EmailMessage(
                    id=req.message_id,
                    tenant_id=req.tenant_id,
                    template=req.template,
                    to_address=composed.to_address,
                    subject=composed.subject[:300],
                    state="suppressed" if suppressed else "queued",
                    last_reply="address is on the suppression list" if suppressed else None,
                    workflow_id=email_workflow_id(req.message_id),
                )
            )
        EMAILS.labels("suppressed" if suppressed else "queued").inc()
        return EmailQueued(
            message_id=req.message_id, to_address=composed.to_address, policy=self._policy(), suppressed=suppressed
        )

    @activity.defn(name=names.SEND_EMAIL)
    async def send(self, req: SendEmail) -> EmailDelivery:
        """One attempt. Every attempt is counted and its reply kept, so tracking shows deferrals as they happen."""
        message_id = req.request.message_id
        if self.breaker is not None:
            try:
                await self.breaker.acquire()
            except CircuitOpenError as exc:  # not an attempt (attempts stay), but tracking says why it waits
                reply = f"SMTP relay circuit {exc.reason}"
                await self._update(req.request.tenant_id, message_id, state="deferred", last_reply=reply)
                raise
        # Last step before the attempt (count it, render, SMTP: a few ms): a send starts right after its token.
        await self._take_send_token(req)
        sent_before = await self._start_attempt(req.request.tenant_id, message_id)
        if (
            sent_before is not None
        ):  # an earlier attempt sent it and said so, then its worker died before Temporal heard
            log.info("email already sent by an earlier attempt", extra={"message_id": str(message_id)})
            return EmailDelivery(message_id=message_id, state="sent", reply=sent_before)
        EMAILS.labels("sending").inc()
        try:
            composed = await self.composer.compose(req.request, req.to_address)
            msg = build_message(self.settings, composed, message_id_header(message_id))
            accepted = await self._send(msg)
        except SmtpTemporaryFailure as err:
            await self._update(req.request.tenant_id, message_id, state="deferred", last_reply=_reply(err))
            EMAILS.labels("deferred").inc()
            raise
        except Exception as err:
            await self._update(req.request.tenant_id, message_id, state="failed", last_reply=_reply(err))
            EMAILS.labels("failed").inc()
            raise
        # Recorded before anything else, QUIT only after: a crash between the relay's reply and this commit is the
        # one moment in which a retry sends the message twice (SMTP has no way to ask the relay whether it has
        # it), and the relay sees that sender leave without QUIT.
        reply = accepted.reply
        try:
            await self._update(
                req.request.tenant_id, message_id, state="sent", last_reply=reply[:REPLY_LIMIT], sent_at=utcnow()
            )
        except BaseException:
            accepted.hang_up()
            raise
        accepted.goodbye()
        if self.breaker is not None:
            await self.breaker.record(ok=True)
        EMAILS.labels("sent").inc()
        log.info("email sent", extra={"message_id": str(message_id), "template": req.request.template})
        return EmailDelivery(message_id=message_id, state="sent", reply=reply)

    async def _take_send_token(self, req: SendEmail) -> None:
        """Take a token from the shared send-rate bucket (prognet.send_rate), asking again after every wait, so a
        send never starts on an earlier answer. The send queue's own limit (the server hands out at most
        EMAIL_MAX_PER_SECOND of these tasks a second) keeps the waits short; the bucket is what holds when a
        starved worker runs the tasks it polled over several seconds all at once. Without the limiter (Redis
        down) nothing is sent: the message is deferred and retried with the send's backoff."""
        if self.send_rate is None:
            return
        ticket = None
        while True:
            try:
                answer = await self.send_rate.acquire(ticket)
            except RedisError as err:
                reply = f"send rate limiter unavailable (Redis: {type(err).__name__}): not sent"
                await self._update(req.request.tenant_id, req.request.message_id, state="deferred", last_reply=reply)
                EMAILS.labels("deferred").inc()
                raise ApplicationError(reply, type=SEND_RATE_UNAVAILABLE) from err
            if answer.granted:
                return
            ticket = answer.ticket_us
            # callers told the same moment (late wake-ups) spread out instead of asking again in a herd
            await asyncio.sleep(answer.wait_seconds + random.uniform(0, 1 / self.send_rate.per_second))

    async def _send(self, msg) -> Accepted:
        """One SMTP send, a failure's outcome told to the circuit: a relay that cannot be reached or does not
        answer in time is down; any reply (even a refusal) means it is up. `send` tells it of a success, once
        the message is recorded sent."""
        if self.breaker is None:
            return await smtp_send(self.settings, msg)
        try:
            return await smtp_send(self.settings, msg)
        except SmtpTemporaryFailure as err:
            await self.breaker.record(ok=not err.relay_down)
            raise
        except Exception:
            await self.breaker.record(ok=True)
            raise

    @activity.defn(name=names.MARK_EMAIL)
    async def mark(self, req: MarkEmail) -> None:
        values: dict[str, str] = {"state": req.state}
        if req.reply is not None:
            values["last_reply"] = req.reply[:REPLY_LIMIT]
        if req.to_address is not None:
            values["to_address"] = req.to_address
        async with self._scope(req.tenant_id) as session:
            before = (await session.exec(select(EmailMessage.state).where(EmailMessage.id == req.message_id))).first()
            await session.exec(
                update(EmailMessage).where(col(EmailMessage.id) == req.message_id).values(updated_at=utcnow(), **values)
            )
            if req.state == "dead_lettered" and before not in (None, "dead_lettered"):  # counted in the overview
                record_event(session, "email.dead_lettered", "email", req.message_id, {}, tenant_id=req.tenant_id)
        EMAILS.labels(req.state).inc()

    @activity.defn(name=names.SUPPRESS_ADDRESS)
    async def suppress(self, req: SuppressAddress) -> None:
        async with self._scope(req.tenant_id) as session:
            await session.exec(
                insert(EmailSuppression)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=req.tenant_id,
                    address=req.address,
                    reason=req.reason[:REPLY_LIMIT],
                    message_id=req.message_id,
                )
                .on_conflict_do_nothing()
            )

    async def _start_attempt(self, tenant_id: uuid.UUID | None, message_id: uuid.UUID) -> str | None:
        """Count an attempt and mark the message `sending`, unless it is already `sent`: then its recorded reply
        (an attempt whose result was lost with its worker is not sent twice once its `sent` was committed)."""
        async with self._scope(tenant_id) as session:
            counted = await session.exec(
                update(EmailMessage)
                .where(col(EmailMessage.id) == message_id, col(EmailMessage.state) != "sent")
                .values(updated_at=utcnow(), state="sending", attempts=EmailMessage.attempts + 1)
                .returning(col(EmailMessage.id))
            )
            if counted.first() is not None:
                return None
            row = (
                await session.exec(
                    select(EmailMessage.state, EmailMessage.last_reply).where(EmailMessage.id == message_id)
                )
            ).first()
            return (row[1] or "") if row is not None and row[0] == "sent" else None

    async def _update(self, tenant_id: uuid.UUID | None, message_id: uuid.UUID, **values) -> None:
        async with self._scope(tenant_id) as session:
            await session.exec(
                update(EmailMessage).where(col(EmailMessage.id) == message_id).values(updated_at=utcnow(), **values)
            )

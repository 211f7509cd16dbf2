"""Email over SMTP with aiosmtplib. Temporary failures (4xx, connection errors, timeouts) raise and are
retried by Temporal with backoff; permanent ones (5xx) are non-retryable ApplicationErrors."""

from __future__ import annotations

import html
import logging
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.contracts import EmailSent, SendInvitationEmail, SendTenantEmail, SendVerificationEmail
from models.db import transaction
from models.tables import Invitation, Tenant, User, VerificationToken
from prognet.settings import Settings
from prognet.tokens import VERIFY_EMAIL, derive_token, invitation_token
from workflows import activity_names as names

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"


def render(template: str, **values: str) -> tuple[str, str]:
    """Render `<template>.txt` and `<template>.html`; values are HTML-escaped for the HTML part."""
    text = (TEMPLATES / f"{template}.txt").read_text().format(**values)
    markup = (TEMPLATES / f"{template}.html").read_text().format(
        **{k: html.escape(v, quote=True) for k, v in values.items()})
    return text, markup


class EmailActivities:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.token_key = settings.derived_key("tokens")

    @activity.defn(name=names.SEND_VERIFICATION_EMAIL)
    async def send_verification_email(self, req: SendVerificationEmail) -> EmailSent:
        async with transaction(self.engine) as session:
            user = await session.get(User, req.user_id)
            token = await session.get(VerificationToken, req.token_id)
        if user is None or token is None:
            raise ApplicationError("user or token no longer exists", type="RecipientGone", non_retryable=True)
        secret = derive_token(self.token_key, VERIFY_EMAIL, req.token_id)
        return await self.compose_and_send(
            user.email, "Confirm your ProgNetwork email address", "verify_email", req.message_id,
            name=user.display_name or "there", link=self.link("/verify-email", secret),
            expires_at=token.expires_at.strftime("%Y-%m-%d %H:%M"))

    @activity.defn(name=names.SEND_WELCOME_EMAIL)
    async def send_welcome_email(self, req: SendTenantEmail) -> EmailSent:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            user = await session.get(User, req.user_id)
            tenant = await session.get(Tenant, req.tenant_id)
        if user is None or tenant is None:
            raise ApplicationError("user or tenant no longer exists", type="RecipientGone", non_retryable=True)
        return await self.compose_and_send(
            user.email, f"{tenant.name} is ready on ProgNetwork", "welcome", req.message_id,
            name=user.display_name or "there", tenant_name=tenant.name)

    @activity.defn(name=names.SEND_INVITATION_EMAIL)
    async def send_invitation_email(self, req: SendInvitationEmail) -> EmailSent:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            invitation = await session.get(Invitation, req.invitation_id)
            tenant = await session.get(Tenant, req.tenant_id)
            inviter = await session.get(User, invitation.invited_by) if invitation else None
        if invitation is None or tenant is None:
            raise ApplicationError("invitation or tenant no longer exists", type="RecipientGone", non_retryable=True)
        token = invitation_token(self.token_key, req.tenant_id, req.invitation_id)
        return await self.compose_and_send(
            invitation.email, f"Join {tenant.name} on ProgNetwork", "invitation", req.message_id,
            inviter=(inviter.display_name or "A colleague") if inviter else "A colleague",
            tenant_name=tenant.name, role=invitation.role, link=self.link("/accept-invitation", token),
            expires_at=invitation.expires_at.strftime("%Y-%m-%d %H:%M"))

    def link(self, path: str, token: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"

    async def compose_and_send(self, to: str, subject: str, template: str, message_id: str,
                               **values: str) -> EmailSent:
        text, markup = render(template, **values)
        msg = EmailMessage()
        msg["From"] = self.settings.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = message_id  # stable across retries: a resend after a crash is recognisable
        msg.set_content(text)
        msg.add_alternative(markup, subtype="html")
        reply = await self.send(msg)
        log.info("email sent", extra={"template": template, "message_id": message_id})
        return EmailSent(message_id=message_id, smtp_reply=reply)

    async def send(self, msg: EmailMessage) -> str:
        s = self.settings
        try:
            _, reply = await aiosmtplib.send(
                msg, hostname=s.smtp_host or "127.0.0.1", port=s.smtp_port, timeout=s.smtp_timeout_seconds,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                start_tls=s.smtp_start_tls,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [r.code for r in err.recipients]
            if all(500 <= c < 600 for c in codes):
                raise ApplicationError(f"recipient refused: {codes}", type="SmtpPermanentFailure",
                                       non_retryable=True) from None
            raise
        except aiosmtplib.SMTPResponseException as err:
            if 500 <= err.code < 600:
                raise ApplicationError(f"SMTP {err.code}: {err.message}", type="SmtpPermanentFailure",
                                       non_retryable=True) from None
            raise  # 4xx: temporary, retried with backoff
        return reply

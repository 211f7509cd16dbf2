"""Email: composing a message from the database (templates in ./templates) and sending it over SMTP.

Messages are composed at send time from ids (user, token, invitation), so a secret link never travels
through workflow history and no body is stored. Sending classifies SMTP replies: 4xx, connection errors and
timeouts raise (temporary: Temporal retries with backoff); 5xx raises a non-retryable `SmtpPermanentFailure`.
Rendering problems are non-retryable `RenderFailed`.

The delivery pipeline's activities (activities/email_delivery.py) compose and send through these.
"""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlencode

import aiosmtplib
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from models.contracts import EmailRequest
from models.db import transaction
from models.errors import RECIPIENT_GONE, RENDER_FAILED, SMTP_PERMANENT
from models.tables import EmailChange, Invitation, Tenant, TenantBilling, User, VerificationToken
from prognet.settings import Settings
from prognet.tokens import CHANGE_EMAIL, VERIFY_EMAIL, derive_token, invitation_token

tracer = trace.get_tracer(__name__)

TEMPLATES = Path(__file__).parent / "templates"


def render(template: str, **values: str) -> tuple[str, str]:
    """Render `<template>.txt` and `<template>.html`; values are HTML-escaped for the HTML part."""
    try:
        text = (TEMPLATES / f"{template}.txt").read_text().format(**values)
        markup = (
            (TEMPLATES / f"{template}.html")
            .read_text()
            .format(**{k: html.escape(v, quote=True) for k, v in values.items()})
        )
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ApplicationError(
            f"template {template!r} could not be rendered: {type(err).__name__}: {err}",
            type=RENDER_FAILED,
            non_retryable=True,
        ) from None
    return text, markup


@dataclass
class Composed:
    to_address: str
    subject: str
    text: str
    html: str


class Composer:
    """Builds a message from an EmailRequest and the database; the only place that knows the templates."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.token_key = settings.derived_key("tokens")

    def link(self, path: str, token: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"

    async def compose(self, req: EmailRequest, to_address: str | None = None) -> Composed:
        compose = getattr(self, f"_{req.template}", None)
        if compose is None:
            raise ApplicationError(f"unknown template {req.template!r}", type=RENDER_FAILED, non_retryable=True)
        try:
            return await compose(req, to_address)
        except KeyError as err:
            raise ApplicationError(
                f"template {req.template!r} needs parameter {err}", type=RENDER_FAILED, non_retryable=True
            ) from None

    async def _user(self, req: EmailRequest) -> User:
        async with transaction(self.engine) as session:
            user = await session.get(User, req.to_user_id) if req.to_user_id else None
        if user is None:
            raise ApplicationError("recipient user no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        return user

    async def _verify_email(self, req: EmailRequest, to_address: str | None) -> Composed:
        user = await self._user(req)
        async with transaction(self.engine) as session:
            token = await session.get(VerificationToken, req.params["token_id"])
        if token is None:
            raise ApplicationError("verification token no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        secret = derive_token(self.token_key, VERIFY_EMAIL, token.id)
        text, markup = render(
            "verify_email",
            name=user.display_name or "there",
            link=self.link("/verify-email", secret),
            expires_at=token.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
        return Composed(to_address or user.email, "Confirm your ProgNetwork email address", text, markup)

    async def _email_change(self, req: EmailRequest) -> EmailChange:
        async with transaction(self.engine) as session:
            change = await session.get(EmailChange, req.params["change_id"])
        if change is None:
            raise ApplicationError("email change no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        return change

    async def _verify_new_email(self, req: EmailRequest, to_address: str | None) -> Composed:
        """To the address being verified (not the account's current one)."""
        user = await self._user(req)
        change = await self._email_change(req)
        async with transaction(self.engine) as session:
            token = await session.get(VerificationToken, change.token_id)
        if token is None:
            raise ApplicationError("verification token no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        text, markup = render(
            "verify_new_email",
            name=user.display_name or "there",
            link=self.link("/verify-email", derive_token(self.token_key, CHANGE_EMAIL, token.id)),
            expires_at=token.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
        return Composed(to_address or change.new_email, "Confirm your new ProgNetwork email address", text, markup)

    async def _email_changed(self, req: EmailRequest, to_address: str | None) -> Composed:
        """To the address the account had before the change: the owner learns of it even if it was not them."""
        user = await self._user(req)
        change = await self._email_change(req)
        if change.old_email is None:
            raise ApplicationError("the email change was not completed", type=RENDER_FAILED, non_retryable=True)
        text, markup = render("email_changed", name=user.display_name or "there", new_email=change.new_email)
        return Composed(to_address or change.old_email, "Your ProgNetwork email address was changed", text, markup)

    async def _welcome(self, req: EmailRequest, to_address: str | None) -> Composed:
        user = await self._user(req)
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            tenant = await session.get(Tenant, req.tenant_id)
        if tenant is None:
            raise ApplicationError("tenant no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        text, markup = render("welcome", name=user.display_name or "there", tenant_name=tenant.name)
        return Composed(to_address or user.email, f"{tenant.name} is ready on ProgNetwork", text, markup)

    async def _invitation(self, req: EmailRequest, to_address: str | None) -> Composed:
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            invitation = await session.get(Invitation, req.params["invitation_id"])
            tenant = await session.get(Tenant, req.tenant_id)
            inviter = await session.get(User, invitation.invited_by) if invitation else None
        if invitation is None or tenant is None:
            raise ApplicationError("invitation or tenant no longer exists", type=RECIPIENT_GONE, non_retryable=True)
        token = invitation_token(self.token_key, tenant.id, invitation.id)
        text, markup = render(
            "invitation",
            inviter=(inviter.display_name or "A colleague") if inviter else "A colleague",
            tenant_name=tenant.name,
            role=invitation.role,
            link=self.link("/accept-invitation", token),
            expires_at=invitation.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
        return Composed(to_address or invitation.email, f"Join {tenant.name} on ProgNetwork", text, markup)

    async def _notice(self, req: EmailRequest, to_address: str | None) -> Composed:
        """A plain notice (operators, tests, the benchmark): subject and body given as parameters."""
        address = to_address or req.to_address or (await self._user(req)).email
        text, markup = render("notice", body=req.params["body"])
        return Composed(address, req.params["subject"], text, markup)

    async def _billing_notice(self, req: EmailRequest, to_address: str | None) -> Composed:
        """A receipt or dunning notice: to the tenant's billing email (where invoices go), else, for a tenant
        without one, to the subscribing user (`to_user_id`). Resolved here, so no address enters history."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as session:
            billing = await session.get(TenantBilling, req.tenant_id) if req.tenant_id else None
        address = to_address or (billing.billing_email if billing else None) or (await self._user(req)).email
        text, markup = render("notice", body=req.params["body"])
        return Composed(address, req.params["subject"], text, markup)


def build_message(settings: Settings, composed: Composed, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    try:
        msg["From"] = settings.mail_from
        msg["To"] = composed.to_address
        msg["Subject"] = composed.subject
        msg["Message-ID"] = message_id  # stable across retries: a resend after a crash is recognisable
        msg["Date"] = formatdate(localtime=False)
    except ValueError as err:  # e.g. a line break in a header: retrying cannot help
        raise ApplicationError(f"invalid email header: {err}", type=RENDER_FAILED, non_retryable=True) from None
    msg.set_content(composed.text)
    msg.add_alternative(composed.html, subtype="html")
    return msg


@dataclass
class Accepted:
    """A message the relay took: its reply, and the connection, still open until the sender has recorded it sent.
    `goodbye()` then (QUIT, in the background); `hang_up()` if it could not (no QUIT). The dev SMTP sink notes a
    message whose sender left without QUIT: only such a message can come twice (a retry cannot know it went)."""

    reply: str
    client: aiosmtplib.SMTP

    def goodbye(self) -> None:
        _QUITTING.add(task := asyncio.create_task(_quit(self.client)))
        task.add_done_callback(_QUITTING.discard)

    def hang_up(self) -> None:
        self.client.close()


async def smtp_send(settings: Settings, msg: EmailMessage, timeout: float | None = None) -> Accepted:
    """Send one message; returns the relay's answer with the connection still open (`Accepted`). Raises as
    described in the module docstring."""
    host = settings.smtp_host or "127.0.0.1"
    # no recipient or subject on the span: traces leave the system (Jaeger, a vendor), addresses must not
    attributes = {"server.address": host, "server.port": settings.smtp_port, "email.message_id": msg["Message-ID"]}
    with tracer.start_as_current_span("smtp send", kind=SpanKind.CLIENT, attributes=attributes):
        return await _smtp_send(settings, host, msg, timeout)  # a failure marks the span (codes only, see below)


async def _smtp_send(settings: Settings, host: str, msg: EmailMessage, timeout: float | None) -> Accepted:
    client = aiosmtplib.SMTP(
        hostname=host,
        port=settings.smtp_port,
        timeout=timeout or settings.smtp_timeout_seconds,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        start_tls=settings.smtp_start_tls,
    )
    try:
        try:
            await client.connect()
            _, reply = await client.send_message(msg)
        except BaseException:
            client.close()
            raise
    # Relays echo the recipient's address in their replies: the exception (which reaches workflow history,
    # logs and the UI) says only the codes; the full reply rides along as `.reply` for the tracking row.
    except aiosmtplib.SMTPRecipientsRefused as err:
        codes = ", ".join(_code(r.code, r.message) for r in err.recipients)
        full = "; ".join(f"{r.code} {r.message}" for r in err.recipients)
        if all(500 <= r.code < 600 for r in err.recipients):
            raise _with_reply(
                ApplicationError(f"recipient refused: {codes}", type=SMTP_PERMANENT, non_retryable=True), full
            ) from None
        raise _with_reply(SmtpTemporaryFailure(f"recipient deferred: {codes}"), full) from None
    except aiosmtplib.SMTPResponseException as err:
        full = f"{err.code} {err.message}"
        if 500 <= err.code < 600:
            raise _with_reply(
                ApplicationError(f"SMTP {_code(err.code, err.message)}", type=SMTP_PERMANENT, non_retryable=True), full
            ) from None
        down = err.code == 421  # "service not available": the relay is shutting its doors
        raise _with_reply(SmtpTemporaryFailure(f"SMTP {_code(err.code, err.message)}", relay_down=down), full) from None
    except aiosmtplib.SMTPTimeoutError:
        raise SmtpTemporaryFailure("timeout waiting for the relay", relay_down=True) from None
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as err:
        raise SmtpTemporaryFailure(f"connection: {type(err).__name__}", relay_down=True) from None
    return Accepted(reply, client)


_QUITTING: set[asyncio.Task] = set()  # goodbyes still on their way (a task needs a reference to finish)


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _code(code: int, message: str) -> str:
    """`550 5.1.1`: the reply code and, when present, the enhanced status code, never the free text."""
    first = (message or "").split(" ", 1)[0]
    return f"{code} {first}" if first[:1].isdigit() and first.count(".") == 2 else str(code)


def _with_reply(err: Exception, reply: str) -> Exception:
    err.reply = reply  # type: ignore[attr-defined]
    return err


class SmtpTemporaryFailure(Exception):
    """4xx, timeout or connection trouble: worth another attempt. `relay_down`: no answer at all (the circuit
    breaker counts those; a 4xx is the relay answering)."""

    def __init__(self, message: str, *, relay_down: bool = False) -> None:
        super().__init__(message)
        self.relay_down = relay_down

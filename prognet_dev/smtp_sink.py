"""The development SMTP sink: a real SMTP conversation (aiosmtpd) that keeps every message in a Maildir.

Start it in-process (`async with SmtpSink(maildir, port=...)`) in tests, or standalone with `prognet smtp-sink`.
Developers read what arrived with `prognet mail list` / `prognet mail show N`; tests use `read_messages()`.

Failure tags: the recipient's address tag (the part of the local part after `+`) makes the sink misbehave, so
the email pipeline's failure paths can be driven end to end. A tag matches by prefix, so `bob+fail421-<uuid>@…`
gives every test its own address:

    +fail421   RCPT gets `421` (temporary) on the first two attempts for that exact address (counted in memory
               for the life of the sink), then the address is accepted
    +fail550   RCPT always gets `550` (permanent); nothing is stored
    +slow      the reply to the end of DATA comes only after `slow_seconds` (default 15 s, longer than the send
               timeout); a client that gives up first (closes the connection) leaves nothing stored

Extending: `MaildirHandler.check_recipient()` sees every RCPT TO address before it is accepted; return an SMTP
reply to refuse it. `before_store()` may answer DATA instead of storing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.policy
import email.utils
import logging
import mailbox
import time
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("prognet.smtp_sink")

SINK_HOSTNAME = "prognet-smtp-sink"  # fixed: socket.getfqdn() can hang on a machine without DNS
DEFAULT_SLOW_SECONDS = 15.0
FAIL421_ATTEMPTS = 2  # a +fail421 address is refused this many times, then accepted


def address_tag(address: str) -> str:
    """The tag of an address, lowercased: `bob+fail421-x@example.com` -> `fail421-x`; '' when there is none."""
    local = address.strip().strip("<>").rpartition("@")[0] or address
    _, plus, tag = local.partition("+")
    return tag.lower() if plus else ""


class MaildirHandler:
    """aiosmtpd handler: accepts recipients (subject to `check_recipient`) and stores each message in a Maildir."""

    def __init__(self, maildir_path: Path, *, slow_seconds: float = DEFAULT_SLOW_SECONDS) -> None:
        self.maildir_path = Path(maildir_path)
        self.slow_seconds = slow_seconds
        self._maildir: mailbox.Maildir | None = None
        self.received = 0
        self.rcpt_attempts: dict[str, int] = {}  # +fail421 addresses (lowercased) -> RCPT attempts so far
        # Message-IDs stored whose sender then vanished without QUIT: it may never have read our 250, so a copy
        # sent again is SMTP's own at-least-once edge (RFC 1047), not a duplicate made by the sender's pipeline.
        self.cut_after_store: collections.Counter[str] = collections.Counter()

    @property
    def maildir(self) -> mailbox.Maildir:
        if self._maildir is None:
            self.maildir_path.parent.mkdir(parents=True, exist_ok=True)
            self._maildir = mailbox.Maildir(self.maildir_path, create=True)
            for sub in ("tmp", "new", "cur"):  # also when the directory existed but was empty
                (self.maildir_path / sub).mkdir(exist_ok=True)
        return self._maildir

    # --- hooks -------------------------------------------------------------------------------------------
    def check_recipient(self, address: str, session: Session, envelope: Envelope) -> str | None:
        """Return None to accept `address`, or a full SMTP reply line to refuse it (the +fail421/+fail550 tags)."""
        tag = address_tag(address)
        if tag.startswith("fail550"):
            log.info("refusing %s with 550 (+fail550)", address)
            return "550 5.1.1 Mailbox unavailable (prognet sink: +fail550)"
        if tag.startswith("fail421"):
            key = address.strip().lower()
            attempt = self.rcpt_attempts.get(key, 0) + 1
            self.rcpt_attempts[key] = attempt
            if attempt <= FAIL421_ATTEMPTS:
                log.info("refusing %s with 421, attempt %d of %d (+fail421)", address, attempt, FAIL421_ATTEMPTS)
                return f"421 4.3.0 Try again later (prognet sink: +fail421, attempt {attempt} of {FAIL421_ATTEMPTS})"
        return None

    async def before_store(self, session: Session, envelope: Envelope) -> str | None:
        """Return None to store the message, or a full SMTP reply line to answer DATA with instead.

        A `+slow` recipient holds the reply for `slow_seconds`. A client that times out closes the connection,
        and aiosmtpd then cancels this coroutine, so the message is never stored.
        """
        if any(address_tag(rcpt).startswith("slow") for rcpt in envelope.rcpt_tos):
            log.info("holding DATA for %s for %.1fs (+slow)", ", ".join(envelope.rcpt_tos), self.slow_seconds)
            await asyncio.sleep(self.slow_seconds)
        return None

    # --- aiosmtpd callbacks ------------------------------------------------------------------------------
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.check_recipient(address, session, envelope)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await self.before_store(session, envelope)
        if reply:
            return reply
        if server.transport is None or server.transport.is_closing():  # the client gave up while we waited
            log.info(
                "client gone before DATA was answered; not storing the message to %s", ", ".join(envelope.rcpt_tos)
            )
            return "451 4.4.2 Connection lost; message not stored"
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        received = email.utils.format_datetime(email.utils.localtime())
        trace = (
            f"Return-Path: <{envelope.mail_from or ''}>\r\n"
            f"Received: from {session.host_name or peer} ([{peer}]) by {SINK_HOSTNAME}; {received}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
            f"X-Peer: {peer}\r\n"
        ).encode("utf-8", "replace")
        key = await asyncio.to_thread(self.maildir.add, trace + content)
        self.received += 1
        session.stored_unconfirmed = BytesHeaderParser().parsebytes(content).get("Message-ID")  # type: ignore[attr-defined]
        log.info("stored message %s from %s to %s", key, envelope.mail_from, ", ".join(envelope.rcpt_tos))
        return "250 2.0.0 OK: message stored"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        session.stored_unconfirmed = None  # type: ignore[attr-defined]
        return "221 Bye"

    def connection_lost(self, session: Session) -> None:
        message_id = getattr(session, "stored_unconfirmed", None)
        if message_id:
            self.cut_after_store[message_id] += 1
            log.info("the sender of %s went away before QUIT (it may not have read the 250)", message_id)


class _SinkSMTP(SMTP):
    """aiosmtpd's server, telling the handler when a connection ends (it has no hook for that)."""

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        if session is not None and isinstance(self.event_handler, MaildirHandler):
            self.event_handler.connection_lost(session)


class SmtpSink:
    """An SMTP server on host:port storing mail into `maildir`. Use `async with` or start()/stop()."""

    def __init__(
        self,
        maildir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 1025,
        handler: MaildirHandler | None = None,
        slow_seconds: float = DEFAULT_SLOW_SECONDS,
    ) -> None:
        self.maildir = Path(maildir)
        self.host = host
        self.port = port
        self.handler = handler or MaildirHandler(self.maildir, slow_seconds=slow_seconds)
        self._server: asyncio.base_events.Server | None = None

    def _factory(self) -> SMTP:
        return _SinkSMTP(self.handler, hostname=SINK_HOSTNAME, ident="ProgNetwork SMTP sink", enable_SMTPUTF8=True)

    async def start(self) -> None:
        _ = self.handler.maildir  # the property creates the Maildir (new/cur/tmp): do it up front
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host=self.host, port=self.port, reuse_address=True)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    @property
    def crashed(self) -> bool:
        """The server stopped listening without stop() being called."""
        return self._server is not None and not self._server.is_serving()

    async def stop(self) -> None:
        server, self._server = self._server, None  # forgotten first: while it closes it is stopping, not crashed
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- reading the Maildir ---------------------------------------------------------------------------------


def _sorted_keys(box: mailbox.Maildir) -> list[str]:
    entries = []
    for key in box.keys():  # noqa: SIM118 - iterating a Mailbox itself yields messages, not keys
        try:
            date = box.get_message(key).get_date()
        except (KeyError, FileNotFoundError):
            continue
        entries.append((date, key))
    entries.sort()
    return [key for _, key in entries]


def read_messages(maildir_path: Path | str) -> list[EmailMessage]:
    """Every message in the Maildir, oldest first, parsed with the modern email policy."""
    path = Path(maildir_path)
    if not all((path / sub).is_dir() for sub in ("new", "cur")):
        return []
    box = mailbox.Maildir(path, create=False)
    parser = BytesParser(policy=email.policy.default)
    messages: list[EmailMessage] = []
    for key in _sorted_keys(box):
        try:
            raw = box.get_bytes(key)
        except (KeyError, FileNotFoundError):
            continue
        messages.append(parser.parsebytes(raw))
    return messages


async def wait_for_messages(maildir_path: Path | str, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
    """Poll the Maildir until it holds at least `count` messages (tests); raises TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        messages = read_messages(maildir_path)
        if len(messages) >= count or time.monotonic() > deadline:
            if len(messages) < count:
                raise TimeoutError(f"expected {count} message(s) in {maildir_path}, found {len(messages)}")
            return messages
        await asyncio.sleep(0.1)


def delivery_date(msg: EmailMessage) -> str:
    """The message's Date header, or when the sink received it."""
    if msg.get("Date"):
        return str(msg["Date"])
    received = str(msg.get("Received", ""))
    return received.rpartition(";")[2].strip()


def message_text(msg: EmailMessage) -> str:
    """The plain-text body (falls back to HTML) of a message."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    return part.get_content()

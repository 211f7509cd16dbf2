"""`activities.email.smtp_send` leaves QUIT to its caller, who says it only once the message is recorded sent.

A worker killed between the relay's 250 and that record is the one case in which a retry sends a message twice;
such a sender must leave without QUIT, so the dev sink (and the chaos report) can tell that copy from ours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from activities.email import smtp_send
from prognet.settings import Settings
from prognet_dev.smtp_sink import SmtpSink, wait_for_messages


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(tmp_path / "mail", port=0) as sink:
        yield sink


def _message(message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "noreply@prognet.test", "alice@example.com", "hello"
    msg["Message-ID"] = message_id
    msg.set_content("hello")
    return msg


async def _closed(accepted, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while accepted.client.is_connected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not accepted.client.is_connected


async def test_quit_comes_from_the_caller_after_its_record(sink: SmtpSink) -> None:
    settings = Settings(smtp_host=sink.host, smtp_port=sink.port)

    recorded = await smtp_send(settings, _message("<recorded@prognet>"))
    assert "stored" in recorded.reply  # the relay's answer to DATA
    await wait_for_messages(sink.maildir, 1, timeout=5)
    assert recorded.client.is_connected  # stored, and no QUIT yet: the caller records it first
    recorded.goodbye()
    assert await _closed(recorded)

    unrecorded = await smtp_send(settings, _message("<unrecorded@prognet>"))
    unrecorded.hang_up()  # the record failed (or the worker died): gone without QUIT
    await wait_for_messages(sink.maildir, 2, timeout=5)
    deadline = time.monotonic() + 5
    while not sink.handler.cut_after_store and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert dict(sink.handler.cut_after_store) == {"<unrecorded@prognet>": 1}

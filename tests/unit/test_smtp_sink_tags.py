"""The dev SMTP sink's failure tags (+fail421, +fail550, +slow), driven by aiosmtplib as the pipeline drives it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from prognet_dev.smtp_sink import SmtpSink, address_tag, read_messages, wait_for_messages

SLOW_SECONDS = 1.5
CLIENT_TIMEOUT = 0.5


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(tmp_path / "mail", port=0, slow_seconds=SLOW_SECONDS) as sink:
        yield sink


def _message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "noreply@prognet.test"
    msg["To"] = to
    msg["Subject"] = f"hello {to}"
    msg.set_content("hello")
    return msg


async def _send(sink: SmtpSink, to: str, timeout: float = 5.0):
    return await aiosmtplib.send(_message(to), hostname=sink.host, port=sink.port, timeout=timeout)


def _unique(tag: str) -> str:
    return f"bob+{tag}-{uuid.uuid4().hex[:8]}@example.com"


def test_address_tag() -> None:
    assert address_tag("bob+fail421-abc@example.com") == "fail421-abc"
    assert address_tag("<Bob+SLOW@example.com>") == "slow"
    assert address_tag("bob@example.com") == ""
    assert address_tag("a+b+c@example.com") == "b+c"


async def test_untagged_is_stored(sink: SmtpSink) -> None:
    to = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    errors, reply = await _send(sink, to)
    assert errors == {} and "stored" in reply
    [msg] = await wait_for_messages(sink.maildir, 1, timeout=5)
    assert msg["To"] == to


async def test_fail421_twice_then_accepted(sink: SmtpSink) -> None:
    to = _unique("fail421")
    for attempt in (1, 2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await _send(sink, to)
        [refusal] = info.value.recipients
        assert refusal.code == 421, (attempt, refusal)
    assert read_messages(sink.maildir) == []

    # another +fail421 address keeps its own count
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await _send(sink, _unique("fail421"))

    errors, _ = await _send(sink, to)
    assert errors == {}
    [msg] = await wait_for_messages(sink.maildir, 1, timeout=5)
    assert msg["To"] == to
    errors, _ = await _send(sink, to)  # and stays accepted
    assert errors == {}
    assert len(read_messages(sink.maildir)) == 2


async def test_fail550_always_refused_and_not_stored(sink: SmtpSink) -> None:
    to = _unique("fail550")
    for _ in range(4):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await _send(sink, to)
        [refusal] = info.value.recipients
        assert refusal.code == 550
    assert read_messages(sink.maildir) == []


async def test_slow_times_the_client_out_and_stores_nothing(sink: SmtpSink) -> None:
    to = _unique("slow")
    started = time.monotonic()
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await _send(sink, to, timeout=CLIENT_TIMEOUT)
    assert time.monotonic() - started < SLOW_SECONDS
    await asyncio.sleep(SLOW_SECONDS + 0.5)  # past the sink's delay: still nothing stored
    assert read_messages(sink.maildir) == []
    assert sink.handler.received == 0

    # the sink is still healthy afterwards
    await _send(sink, "carol@example.com")
    assert len(await wait_for_messages(sink.maildir, 1, timeout=5)) == 1


async def test_slow_is_delivered_to_a_patient_client(sink: SmtpSink) -> None:
    to = _unique("slow")
    errors, _ = await _send(sink, to, timeout=SLOW_SECONDS + 5)
    assert errors == {}
    [msg] = read_messages(sink.maildir)
    assert msg["To"] == to


def test_slow_seconds_default() -> None:
    assert SmtpSink(Path("/nonexistent"), port=0).handler.slow_seconds == 15.0


def test_embedded_stack_passes_slow_seconds(tmp_path: Path) -> None:
    from prognet_dev import EmbeddedStack, stack_settings

    stack = EmbeddedStack(stack_settings(tmp_path / "data"), services={"smtp"}, smtp_slow_seconds=2.5)
    assert stack.smtp is not None and stack.smtp.sink.handler.slow_seconds == 2.5
    default = EmbeddedStack(stack_settings(tmp_path / "data2"), services={"smtp"})
    assert default.smtp is not None and default.smtp.sink.handler.slow_seconds == 15.0


async def test_a_sender_gone_after_the_250_but_before_quit_is_noted(sink: SmtpSink) -> None:
    """The chaos run tells SMTP's own at-least-once edge (a sender killed while the 250 was on its way) from a
    duplicate our pipeline made: the sink notes a stored message whose sender never said QUIT."""
    cut, polite = _message(_unique("cut")), _message(_unique("polite"))
    cut["Message-ID"], polite["Message-ID"] = "<cut@prognet>", "<polite@prognet>"

    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=5)
    await client.connect()
    await client.send_message(cut)
    client.close()  # gone without QUIT, as a SIGKILLed worker is
    await aiosmtplib.send(polite, hostname=sink.host, port=sink.port, timeout=5)  # ends with QUIT

    await wait_for_messages(sink.maildir, 2, timeout=5)
    deadline = time.monotonic() + 5
    while not sink.handler.cut_after_store and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the polite connection has closed too by now
    assert dict(sink.handler.cut_after_store) == {"<cut@prognet>": 1}

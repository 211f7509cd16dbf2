"""The email pipeline end to end: real worker process, real SMTP conversation with the dev sink's failure tags."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from email.utils import parsedate_to_datetime

import asyncpg
from temporalio.client import Client

from models.contracts import EmailDecision, EmailRequest, EmailResult
from models.names import (
    EMAIL_DELIVERY_WORKFLOW,
    EMAIL_TASK_QUEUE,
    SA_SAGA_STATUS,
    SIGNAL_EMAIL_DECISION,
    email_workflow_id,
)
from prognet_dev import EmbeddedStack, read_messages
from tests.integration.conftest import SEND_RATE


def address(tag: str = "") -> str:
    return f"bob{'+' + tag if tag else ''}-{uuid.uuid4().hex[:10]}@example.com"


async def send(temporal: Client, to: str, subject: str = "Pipeline"):
    req = EmailRequest(
        message_id=uuid.uuid4(),
        template="notice",
        to_address=to,
        params={"subject": subject, "body": "Hello from the pipeline"},
    )
    return req.message_id, await temporal.start_workflow(
        EMAIL_DELIVERY_WORKFLOW,
        req,
        id=email_workflow_id(req.message_id),
        task_queue=EMAIL_TASK_QUEUE,
        result_type=EmailResult,
    )


async def tracking(stack: EmbeddedStack, message_id: uuid.UUID, until: set[str], timeout: float = 30) -> asyncpg.Record:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = await conn.fetchrow("select * from email_messages where id = $1", message_id)
            if row is not None and row["state"] in until:
                return row
            assert time.monotonic() < deadline, f"message never reached {until}: {dict(row) if row else None}"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def delivered_to(stack: EmbeddedStack, to: str) -> int:
    return sum(1 for m in read_messages(stack.maildir) if m["To"] == to)


async def test_fail421_is_deferred_twice_then_delivered(stack: EmbeddedStack, temporal: Client):
    to = address("fail421")
    message_id, handle = await send(temporal, to)
    assert (await handle.result()).state == "sent"
    row = await tracking(stack, message_id, {"sent"})
    assert row["attempts"] == 3 and row["sent_at"] is not None
    assert delivered_to(stack, to) == 1
    msg = next(m for m in read_messages(stack.maildir) if m["To"] == to)
    assert msg["Message-ID"] == f"<{message_id}@prognet>"


async def test_fail550_goes_straight_to_the_dead_letter_and_suppresses(stack: EmbeddedStack, temporal: Client):
    to = address("fail550")
    message_id, handle = await send(temporal, to)
    row = await tracking(stack, message_id, {"dead_lettered"})
    assert row["attempts"] == 1 and "550" in row["last_reply"]  # no retries for a permanent failure
    description = await handle.describe()
    assert description.typed_search_attributes.get(SA_SAGA_STATUS) == "awaiting_operator"
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        assert await conn.fetchval("select count(*) from email_suppressions where lower(address) = $1", to) == 1
    finally:
        await conn.close()
    # the next message to that address is not even tried
    _again_id, again = await send(temporal, to)
    assert (await again.result()).state == "suppressed"
    # the operator gives up on the first one
    await handle.signal(SIGNAL_EMAIL_DECISION, EmailDecision(action="discard", reason="test"))
    assert (await handle.result()).state == "discarded"
    assert delivered_to(stack, to) == 0


async def test_slow_relay_times_out_and_is_retried(stack: EmbeddedStack, temporal: Client):
    to = address("slow")
    message_id, handle = await send(temporal, to)
    row = await tracking(stack, message_id, {"deferred"}, timeout=20)
    assert "timeout" in row["last_reply"].lower()
    row = await tracking(stack, message_id, {"deferred", "sending"}, timeout=20)
    await asyncio.sleep(4)
    row = await tracking(stack, message_id, {"deferred", "sending"})
    assert row["attempts"] >= 2  # retried, never given up on while attempts remain
    await handle.terminate("test done")


async def test_worker_killed_during_delivery_loses_no_message(stack: EmbeddedStack, temporal: Client):
    await stack.smtp.stop()  # relay down: every message is being retried when the worker dies
    try:
        sent = [await send(temporal, address()) for _ in range(5)]
        # every message is deferred when the worker dies: refused by the closed relay, or held by the SMTP circuit
        # the first refusals opened (then it made no SMTP attempt, and tracking says the circuit holds it)
        held = [await tracking(stack, message_id, {"deferred"}) for message_id, _ in sent]
        assert all(r["attempts"] >= 1 or "circuit open" in r["last_reply"] for r in held), [dict(r) for r in held]
        assert any(r["attempts"] >= 1 for r in held)  # the relay was really met, not only the circuit
        stack.worker.process.signal_group(signal.SIGKILL)
        await stack.worker.process.wait()
    finally:
        await stack.smtp.start()
    await stack.worker.start()
    for message_id, handle in sent:
        assert (await handle.result()).state == "sent"
        row = await tracking(stack, message_id, {"sent"})
        before = next(r for r in held if r["id"] == message_id)
        assert row["attempts"] > before["attempts"]  # the attempt that sent it came after the restart
        assert delivered_to(stack, row["to_address"]) == 1


async def test_500_messages_at_once_all_arrive_under_the_rate_limit(stack: EmbeddedStack, temporal: Client):
    subject = f"Burst {uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    handles = await asyncio.gather(*(send(temporal, address(), subject) for _ in range(500)))
    results = await asyncio.gather(*(h.result() for _, h in handles))
    elapsed = time.monotonic() - started
    assert [r.state for r in results] == ["sent"] * 500
    burst = [m for m in read_messages(stack.maildir) if m["Subject"] == subject]
    assert len(burst) == 500 and len({m["Message-ID"] for m in burst}) == 500
    # The send queue's limit holds: never much more than SEND_RATE deliveries in any one second.
    per_second = Counter(int(email_date(m)) for m in burst)
    assert max(per_second.values()) <= SEND_RATE * 2, per_second.most_common(3)
    assert elapsed >= 500 / SEND_RATE * 0.8


def email_date(msg) -> float:
    """When the sink received the message (its Received trace header), to the second."""
    return parsedate_to_datetime(str(msg["Received"]).rpartition(";")[2].strip()).timestamp()

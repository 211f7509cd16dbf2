"""Crash safety: the worker dies between "user created" and "email sent"; a new worker finishes the saga."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import httpx

from prognet_dev import EmbeddedStack, read_messages
from tests.integration.conftest import PASSWORD, email_to, new_email, token_from


async def test_worker_killed_after_user_created_before_email_sent(http: httpx.AsyncClient, stack: EmbeddedStack):
    email = new_email("crash")
    # With the SMTP relay down, the saga stops after "user created": the email step keeps failing.
    await stack.smtp.stop()
    try:
        r = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 202, r.text  # answered once the pending user exists
        conn = await asyncpg.connect(stack.postgres_dsn)
        try:
            assert await conn.fetchval("select status from users where lower(email) = $1", email) == "pending"
        finally:
            await conn.close()
        await asyncio.sleep(1.5)  # at least one failed send attempt
        assert not any(m["To"] == email for m in read_messages(stack.maildir))

        # kill -9: no graceful shutdown, whatever the worker held in memory is gone.
        stack.worker.process.signal_group(signal.SIGKILL)
        await stack.worker.process.wait()
    finally:
        await stack.smtp.start()
    await stack.worker.start()

    msg = await email_to(stack, email, timeout=60)
    r = await http.post("/v1/auth/verify", json={"token": token_from(msg)})
    assert r.status_code == 200, r.text

    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        rows = await conn.fetch("select id, status from users where lower(email) = $1", email)
        assert [row["status"] for row in rows] == ["active"]  # exactly one user
        events = await conn.fetch(
            "select type from domain_events where aggregate_id = $1 order by id", str(rows[0]["id"])
        )
        assert [e["type"] for e in events] == ["user.registered", "user.verified"]
    finally:
        await conn.close()
    assert sum(1 for m in read_messages(stack.maildir) if m["To"] == email) == 1

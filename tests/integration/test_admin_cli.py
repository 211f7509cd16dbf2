"""`prognet admin grant|revoke EMAIL` as a subprocess against a throwaway embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from prognet_dev import EmbeddedStack, stack_settings

SERVICE_VARS = (
    "DATABASE_URL",
    "MIGRATION_DATABASE_URL",
    "PROGNET_DATA_DIR",
    "REDIS_URL",
    "TEMPORAL_ADDRESS",
    "SMTP_HOST",
)


@pytest.fixture(scope="module")
async def pg() -> AsyncIterator[EmbeddedStack]:
    # Not under pytest's tmp dir: pytest makes it 0700, which locks out PostgreSQL's own system user.
    root = Path(tempfile.mkdtemp(prefix="prognet-admin-"))
    root.chmod(0o755)
    stack = EmbeddedStack(stack_settings(root / "data"), services={"postgres"}, log=lambda name, line: None)
    await stack.start()
    yield stack
    await stack.stop()
    shutil.rmtree(root, ignore_errors=True)


async def prognet(*args: str, **env: str) -> tuple[int, str, str]:
    """Run the CLI in a clean environment (outside the repo, so no .env file applies) plus `env`."""
    base = {k: v for k, v in os.environ.items() if k.upper() not in SERVICE_VARS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prognet.cli",
        *args,
        env={**base, **env},
        cwd=tempfile.gettempdir(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def urls(stack: EmbeddedStack) -> dict[str, str]:
    assert stack.migration_database_url and stack.database_url
    return {"MIGRATION_DATABASE_URL": stack.migration_database_url, "DATABASE_URL": stack.database_url}


async def new_user(stack: EmbeddedStack) -> tuple[uuid.UUID, str]:
    user_id, email = uuid.uuid4(), f"Operator-{uuid.uuid4().hex[:8]}@Example.com"
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        await conn.execute(
            "insert into users(id, email, password_hash, status, is_platform_admin) "
            "values ($1, $2, 'x', 'active', false)",
            user_id,
            email,
        )
    finally:
        await conn.close()
    return user_id, email


async def state(stack: EmbeddedStack, user_id: uuid.UUID) -> tuple[bool, list[str]]:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        flag = await conn.fetchval("select is_platform_admin from users where id = $1", user_id)
        events = await conn.fetch(
            "select type from domain_events where aggregate_type = 'user' and aggregate_id = $1 order by id",
            str(user_id),
        )
    finally:
        await conn.close()
    return flag, [e["type"] for e in events]


async def test_grant_and_revoke_case_insensitive(pg: EmbeddedStack) -> None:
    user_id, email = await new_user(pg)

    rc, out, err = await prognet("admin", "grant", email.lower(), **urls(pg))
    assert rc == 0, err
    assert "is now a platform admin" in out
    assert await state(pg, user_id) == (True, ["user.platform_admin_granted"])

    rc, out, err = await prognet("admin", "grant", email.upper(), **urls(pg))  # idempotent, no second event
    assert rc == 0, err
    assert "already" in out
    assert await state(pg, user_id) == (True, ["user.platform_admin_granted"])

    rc, out, err = await prognet("admin", "revoke", email, **urls(pg))
    assert rc == 0, err
    assert "no longer" in out
    assert await state(pg, user_id) == (False, ["user.platform_admin_granted", "user.platform_admin_revoked"])


async def test_unknown_email_is_a_one_line_error(pg: EmbeddedStack) -> None:
    rc, out, err = await prognet("admin", "grant", "nobody-here@example.com", **urls(pg))
    assert rc == 1
    assert out == ""
    assert err.strip().splitlines() == ["error: no user with that email: nobody-here@example.com"]


async def test_database_url_alone_is_enough(pg: EmbeddedStack) -> None:
    user_id, email = await new_user(pg)
    assert pg.database_url
    rc, _, err = await prognet("admin", "grant", email, DATABASE_URL=pg.database_url)
    assert rc == 0, err
    assert (await state(pg, user_id))[0] is True


async def test_embedded_database_of_a_running_data_dir(pg: EmbeddedStack) -> None:
    """No URL at all: the CLI finds the data dir's PostgreSQL already running (as under `prognet dev`)."""
    user_id, email = await new_user(pg)
    rc, _out, err = await prognet("admin", "grant", email, "--data-dir", str(pg.data_dir))
    assert rc == 0, err
    assert (await state(pg, user_id))[0] is True


async def test_unreachable_database_is_a_one_line_error(pg: EmbeddedStack) -> None:
    rc, _, err = await prognet(
        "admin", "revoke", "x@example.com", DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:1/none"
    )
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database error:"), err


async def test_embedded_database_started_for_the_command() -> None:
    """No URL and nothing running: the CLI starts the data dir's PostgreSQL just for this, then stops it."""
    root = Path(tempfile.mkdtemp(prefix="prognet-admin-"))
    root.chmod(0o755)
    try:

        def make() -> EmbeddedStack:
            return EmbeddedStack(stack_settings(root / "data"), services={"postgres"}, log=lambda name, line: None)

        async with make() as stack:
            user_id, email = await new_user(stack)
        rc, _out, err = await prognet("admin", "grant", email, "--data-dir", str(root / "data"))
        assert rc == 0, err
        async with make() as stack:
            assert (await state(stack, user_id))[0] is True
    finally:
        shutil.rmtree(root, ignore_errors=True)

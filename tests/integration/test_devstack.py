"""The embedded dev stack itself: every service answers, data survives a restart, nothing is left behind,
and a busy port is reported in one line naming the component."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from prognet_dev import EmbeddedStack, StackError, free_port, load_search_attributes, read_messages, stack_settings

REPO = Path(__file__).resolve().parents[2]


def _quiet(name: str, line: str) -> None:
    pass


def _gone(pid: int) -> bool:
    """True when neither the process nor anything in its process group is alive."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        pass
    else:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("devstack") / "data"


async def test_stack_starts_answers_and_stops_clean(stack_dir: Path) -> None:
    logged: list[str] = []
    stack = EmbeddedStack(stack_settings(stack_dir), run_migrations=False, log=lambda name, line: logged.append(line))
    async with stack:
        assert not [line for line in logged if "localhost" in line or "0.0.0.0" in line], "127.0.0.1 everywhere"
        pids = [p.pid for p in stack.processes()]
        assert len(pids) == 3  # temporal, postgres, redis (the SMTP sink runs in-process)
        # the app connects as the RLS-bound application role; migrations run as the owner
        assert stack.database_url.startswith("postgresql+asyncpg://prognet_app@/prognet?host=")
        assert stack.migration_database_url.startswith("postgresql+asyncpg://postgres@/prognet?host=")

        conn = await asyncpg.connect(stack.postgres_dsn)
        try:
            assert await conn.fetchval("select 1") == 1
            await conn.execute("create table devstack_probe (v text)")
            await conn.execute("insert into devstack_probe values ('kept')")
        finally:
            await conn.close()

        r = aioredis.from_url(stack.redis_url)
        try:
            assert await r.ping()
            await r.set("devstack-probe", "kept")
        finally:
            await r.aclose()

        client = await Client.connect(stack.temporal_address, namespace=stack.temporal_namespace)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=stack.temporal_namespace)
        )
        assert set(load_search_attributes()) <= set(listed.custom_attributes)
        # the server's SQLite file keeps a write-ahead log, not a rollback journal (components.SQLITE_PRAGMAS)
        assert stack.temporal is not None
        with contextlib.closing(sqlite3.connect(f"file:{stack.temporal.db_file}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        msg = EmailMessage()
        msg["From"] = "sender@prognet.localhost"
        msg["To"] = "someone@example.test"
        msg["Subject"] = "devstack probe"
        msg.set_content("hello from the test")
        await aiosmtplib.send(msg, hostname=stack.smtp_host, port=stack.smtp_port, timeout=10)
        stored = read_messages(stack.maildir)
        assert [m["Subject"] for m in stored] == ["devstack probe"]
        assert stored[0]["X-Envelope-To"] == "someone@example.test"
        assert "hello from the test" in stored[0].get_body(("plain",)).get_content()

    assert all(_gone(pid) for pid in pids), "a child process outlived the stack"
    assert not (stack_dir / "postgres" / "postmaster.pid").exists()
    assert not list((stack_dir / "postgres").glob(".s.PGSQL.*"))
    assert not any(p.name.endswith((".pid", ".lock")) for p in stack_dir.rglob("*"))


def test_banner_gives_every_address_as_127_0_0_1(tmp_path: Path) -> None:
    stack = EmbeddedStack(stack_settings(tmp_path / "data"), app=True, log=_quiet)
    table = stack.table()
    for component in ("Temporal gRPC", "Temporal UI", "Redis", "SMTP sink", "Stripe sandbox", "Worker", "API"):
        (row,) = [line for line in table.splitlines() if line.startswith(component + " ")]
        assert "127.0.0.1:" in row, row
    assert "localhost" not in table
    assert "0.0.0.0" not in table


def test_banner_says_where_each_metrics_endpoint_is(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data")
    table = EmbeddedStack(settings, app=True, log=_quiet).table()
    for component, port in (
        ("Temporal metrics", settings.temporal_metrics_port),
        ("Metrics: worker", settings.worker_metrics_port),
        ("Metrics: Temporal SDK", settings.worker_sdk_metrics_port),
        ("Metrics: API", settings.api_port),
    ):
        (row,) = [line for line in table.splitlines() if line.startswith(component + " ")]
        assert f"http://127.0.0.1:{port}/metrics" in row, row


async def test_second_start_reuses_the_data(stack_dir: Path) -> None:
    assert (stack_dir / "postgres" / "PG_VERSION").exists(), "runs after the first test"
    async with EmbeddedStack(stack_settings(stack_dir), run_migrations=False, log=_quiet) as stack:
        conn = await asyncpg.connect(stack.postgres_dsn)
        try:
            assert await conn.fetchval("select v from devstack_probe") == "kept"
        finally:
            await conn.close()
        r = aioredis.from_url(stack.redis_url)
        try:
            assert await r.get("devstack-probe") == b"kept"
        finally:
            await r.aclose()
        client = await Client.connect(stack.temporal_address)
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert set(load_search_attributes()) <= set(listed.custom_attributes)
        assert len(read_messages(stack.maildir)) == 1


async def test_busy_port_names_the_component(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = EmbeddedStack(stack_settings(tmp_path / "data", redis_port=port), run_migrations=False, log=_quiet)
        with pytest.raises(StackError) as info:
            await stack.start()
    assert str(info.value) == f"Redis port 127.0.0.1:{port} is busy"
    assert info.value.component == "Redis"
    assert stack.processes() == []
    assert not (tmp_path / "data" / "postgres").exists(), "nothing starts when a port is taken"


def test_prognet_dev_busy_port_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            k: v
            for k, v in os.environ.items()
            if k.upper() not in {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "SMTP_HOST"}
        }
        env.update(
            PROGNET_DATA_DIR=str(tmp_path / "data"),
            TEMPORAL_PORT=str(free_port()),
            TEMPORAL_UI_PORT=str(port),
            REDIS_PORT=str(free_port()),
            SMTP_PORT=str(free_port()),
            API_PORT=str(free_port()),
        )
        proc = subprocess.run(
            [sys.executable, "-m", "prognet.cli", "dev"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: Temporal UI port 127.0.0.1:{port} is busy"]


async def test_external_services_are_not_started(tmp_path: Path) -> None:
    settings = stack_settings(
        tmp_path / "data",
        database_url="postgresql+asyncpg://app:secret@db.example:5432/prognet",
        redis_url="redis://cache.example:6379/0",
        temporal_address="temporal.example:7233",
        smtp_host="mail.example",
        smtp_port=2525,
        stripe_api_base="https://api.stripe.com",
    )
    stack = EmbeddedStack(settings, run_migrations=False, log=_quiet)
    assert stack.components == []
    assert stack.postgres_dsn == "postgresql://app:secret@db.example:5432/prognet"
    env = stack.service_env()
    assert env["TEMPORAL_ADDRESS"] == "temporal.example:7233" and env["SMTP_PORT"] == "2525"
    assert all("secret" not in row[1] for row in stack.rows())


async def test_one_stack_per_data_dir(tmp_path: Path) -> None:
    only_smtp = dict(services={"smtp", "stripe"}, run_migrations=False, log=_quiet)
    async with EmbeddedStack(stack_settings(tmp_path / "data"), **only_smtp):
        second = EmbeddedStack(stack_settings(tmp_path / "data"), **only_smtp)
        with pytest.raises(StackError, match=r"data dir .* is in use by another prognet process \(pid \d+\)"):
            await second.start()
    assert not (tmp_path / "data" / ".lock").exists()
    async with EmbeddedStack(stack_settings(tmp_path / "data"), **only_smtp):  # free again once the first one stopped
        pass

"""The supervised dev stack (`prognet dev`): a crashed process is restarted with its data, the app carries on without
a restart of its own, and a crash loop stops everything with one clear line."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowExecutionStatus

from prognet_dev import EmbeddedStack, RestartPolicy, stack_settings

from .conftest import PASSWORD, email_to, new_email, token_from

FAST = RestartPolicy(initial_delay=0.1, max_delay=1.0, poll_interval=0.1)
LOG: list[str] = []


def _keep(name: str, line: str) -> None:
    LOG.append(f"{name} | {line}")


async def _back(name: str, restart: int, timeout: float = 60) -> None:
    """Wait until the supervisor logged restart number `restart` of `name` and that it is back."""
    async with asyncio.timeout(timeout):
        while True:
            lines = [line for line in LOG if line.startswith(f"devstack | {name} ")]
            said = [line for line in lines if line.endswith(f"(restart {restart})")]
            if said and f"devstack | {name} is back" in lines[lines.index(said[-1]) :]:
                return
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def supervised() -> AsyncIterator[EmbeddedStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="prognet-sup-"))
    data_dir.chmod(0o755)  # PostgreSQL's own system user must get in
    stack = EmbeddedStack(stack_settings(data_dir / "data"), app=True, log=_keep)
    try:
        await stack.start()
    except BaseException:
        print("\n".join(LOG[-100:]))
        raise
    supervisor = asyncio.create_task(stack.supervise(FAST))
    yield stack
    assert not supervisor.done(), supervisor.result()
    await stack.stop()
    assert supervisor.cancelled()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def http(supervised: EmbeddedStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=supervised.api_url, timeout=30) as client:
        yield client


async def _register_and_verify(http: httpx.AsyncClient, stack: EmbeddedStack, email: str) -> str:
    """Returns the registration's workflow id."""
    r = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 202, r.text
    workflow_id = r.json()["workflow_id"]
    r = await http.post("/v1/auth/verify", json={"token": token_from(await email_to(stack, email))})
    assert r.status_code == 200, r.text
    return workflow_id


async def test_killed_worker_is_restarted_and_runs_new_sagas(supervised: EmbeddedStack, http: httpx.AsyncClient):
    assert supervised.worker is not None and supervised.worker.process is not None
    old_pid = supervised.worker.process.pid
    supervised.worker.process.signal_group(signal.SIGKILL)
    await _back("Worker", 1)
    assert "devstack | Worker exited with code -9; restarting in 0.1 s (restart 1)" in LOG
    assert supervised.worker.process.pid != old_pid
    await _register_and_verify(http, supervised, new_email("after-worker-crash"))


async def test_killed_api_relay_and_dispatchers_are_restarted(supervised: EmbeddedStack, http: httpx.AsyncClient):
    """Every app process is supervised, not only the worker: each killed one is started again, the API on its port."""
    processes = [supervised.api, supervised.relay, supervised.webhooks, supervised.consumers]
    for component in processes:
        assert component is not None and component.process is not None, component
        old_pid = component.process.pid
        component.process.signal_group(signal.SIGKILL)
        await _back(component.name, 1)
        assert f"devstack | {component.name} exited with code -9; restarting in 0.1 s (restart 1)" in LOG
        assert component.process is not None and component.process.pid != old_pid
    async with asyncio.timeout(30):  # the restarted API answers on the same address
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:  # the pooled connection died with the old process
                pass
            await asyncio.sleep(0.2)
    workflow_id = await _register_and_verify(http, supervised, new_email("after-app-crashes"))
    r = aioredis.from_url(supervised.redis_url)
    try:  # the restarted relay publishes the new registration's events
        async with asyncio.timeout(30):
            while not any(f[b"workflow_id"] == workflow_id.encode() for _, f in await r.xrange("events:all")):
                await asyncio.sleep(0.2)
    finally:
        await r.aclose()


async def test_killed_redis_comes_back_with_its_data(supervised: EmbeddedStack, http: httpx.AsyncClient):
    assert supervised.redis is not None and supervised.redis.process is not None and supervised.api is not None
    api_pid = supervised.api.process.pid if supervised.api.process else None
    relay_pid = supervised.relay.process.pid if supervised.relay and supervised.relay.process else None
    r = aioredis.from_url(supervised.redis_url)
    try:
        await r.set("supervisor-probe", "kept")
    finally:
        await r.aclose()
    # Redis appends to its file every second (appendfsync everysec), and postpones the append by up to two more
    # while a slow fsync runs: what it promises to keep through a crash is older than that.
    await asyncio.sleep(3)
    supervised.redis.process.signal_group(signal.SIGKILL)
    await _back("Redis", 1)
    r = aioredis.from_url(supervised.redis_url)
    try:
        assert await r.get("supervisor-probe") == b"kept"
    finally:
        await r.aclose()
    async with asyncio.timeout(30):  # the API's own Redis client reconnects: no restart of the API
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.2)
    email = new_email("after-redis-crash")
    await _register_and_verify(http, supervised, email)
    assert (await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).status_code == 200
    assert supervised.api.process is not None and supervised.api.process.pid == api_pid
    assert supervised.relay is not None and supervised.relay.process is not None
    assert supervised.relay.process.pid == relay_pid  # the relay reconnects to Redis by itself


async def test_killed_postgres_comes_back_with_its_data(supervised: EmbeddedStack, http: httpx.AsyncClient):
    assert supervised.postgres is not None and supervised.postgres.process is not None
    assert supervised.relay is not None and supervised.relay.process is not None
    relay_pid = supervised.relay.process.pid
    email = new_email("before-postgres-crash")
    await _register_and_verify(http, supervised, email)
    # only the postmaster, as a crash would: its backends are orphaned and the supervisor must clear them
    pid = supervised.postgres.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await _back("PostgreSQL", 1)
    conn = await asyncpg.connect(supervised.postgres_dsn)
    try:
        assert await conn.fetchval("select count(*) from users where email = $1", email) == 1
    finally:
        await conn.close()
    async with asyncio.timeout(30):  # the API's pool pre-pings and replaces its dead connections
        while (await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})).status_code != 200:
            await asyncio.sleep(0.2)
    workflow_id = await _register_and_verify(http, supervised, new_email("after-postgres-crash"))
    # the relay reconnected by itself (same process) and publishes the new registration's events
    assert supervised.relay is not None and supervised.relay.process is not None
    assert supervised.relay.process.pid == relay_pid
    r = aioredis.from_url(supervised.redis_url)
    try:
        async with asyncio.timeout(30):
            while not any(f[b"workflow_id"] == workflow_id.encode() for _, f in await r.xrange("events:all")):
                await asyncio.sleep(0.2)
    finally:
        await r.aclose()


async def test_killed_temporal_comes_back_and_the_worker_polls_again(
    supervised: EmbeddedStack, http: httpx.AsyncClient
):
    assert supervised.temporal is not None and supervised.temporal.process is not None
    assert supervised.worker is not None and supervised.worker.process is not None
    worker_pid = supervised.worker.process.pid
    before = await _register_and_verify(http, supervised, new_email("before-temporal-crash"))
    supervised.temporal.process.signal_group(signal.SIGKILL)
    await _back("Temporal", 1)
    client = await Client.connect(supervised.temporal_address or "", namespace=supervised.temporal_namespace)
    described = await client.get_workflow_handle(before).describe()  # its history is still in the SQLite file
    assert described.status == WorkflowExecutionStatus.COMPLETED
    # the SDK worker retries its polls until the server is back: the worker process never exits
    await _register_and_verify(http, supervised, new_email("after-temporal-crash"))
    assert supervised.worker.process.pid == worker_pid


async def test_a_crash_loop_stops_with_one_clear_line(tmp_path: Path):
    lines: list[str] = []
    stack = EmbeddedStack(
        stack_settings(tmp_path / "data"),
        services={"redis"},
        run_migrations=False,
        log=lambda name, line: lines.append(f"{name} | {line}"),
    )
    policy = RestartPolicy(initial_delay=0.2, max_restarts=2, window=30, poll_interval=0.05)
    async with stack:
        supervisor = asyncio.create_task(stack.supervise(policy))
        kills = 0
        async with asyncio.timeout(30):
            while not supervisor.done():
                assert stack.redis is not None and stack.redis.process is not None
                if lines.count("devstack | Redis is back") == kills:  # up again (not still starting): kill it
                    stack.redis.process.signal_group(signal.SIGKILL)
                    kills += 1
                await asyncio.sleep(0.05)
        reason = supervisor.result()
    assert reason.startswith("Redis crashed 3 times within 30 s (last: exited with code -9")
    assert reason.endswith("; stopping everything")
    restarts = [line for line in lines if "restarting in" in line]
    assert restarts == [
        "devstack | Redis exited with code -9; restarting in 0.2 s (restart 1)",
        "devstack | Redis exited with code -9; restarting in 0.4 s (restart 2)",
    ]


async def test_in_process_sink_and_sandbox_are_restarted(tmp_path: Path):
    lines: list[str] = []
    stack = EmbeddedStack(
        stack_settings(tmp_path / "data"),
        services={"smtp", "stripe"},
        run_migrations=False,
        log=lambda name, line: lines.append(f"{name} | {line}"),
    )
    async with stack:
        supervisor = asyncio.create_task(stack.supervise(FAST))
        assert stack.smtp is not None and stack.stripe is not None
        # what a crash looks like from inside: the listening server goes away without stop()
        stack.smtp.sink._server.close()  # type: ignore[union-attr]
        stack.stripe.sandbox._server.should_exit = True  # type: ignore[union-attr]
        async with asyncio.timeout(20):
            while not {"devstack | SMTP sink is back", "devstack | Stripe sandbox is back"} <= set(lines):
                await asyncio.sleep(0.05)
        assert "devstack | SMTP sink stopped serving; restarting in 0.1 s (restart 1)" in lines
        assert "devstack | Stripe sandbox stopped serving; restarting in 0.1 s (restart 1)" in lines
        async with httpx.AsyncClient(base_url=stack.stripe_api_base, timeout=10) as http:
            r = await http.get("/v1/customers", auth=(stack.stripe_secret_key or "", ""))
            assert r.status_code == 200, r.text
        _, writer = await asyncio.open_connection(stack.smtp_host, stack.smtp_port)
        writer.close()
        assert not supervisor.done()

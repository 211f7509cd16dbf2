"""Fault injection: each dependency (Redis, PostgreSQL, Temporal, the SMTP relay, the Stripe sandbox) goes away for a
few seconds while a small load of clients logs in, reads, registers and creates tenants; afterwards nothing answered
500 or reset a connection, every 503 said when to retry, nobody legitimate is throttled, every accepted saga finished
and nothing was done twice.

One supervised stack for the module (worker and API as processes, as `prognet dev` runs them). The supervisor's
first restart waits OUTAGE seconds, so a killed process stays down that long; the in-process SMTP sink and Stripe
sandbox are stopped and started explicitly for the same time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.client import Client as TemporalClient

from models.names import tenant_workflow_id
from prognet.payload_codec import data_converter
from prognet_dev import EmbeddedStack, RestartPolicy, read_messages, stack_settings
from prognet_dev.load import Observed as LoadObserved
from prognet_dev.load import RetryingClient
from tests.support.backbone import backbone_story
from tests.support.workflows import history_story

from .conftest import FAST_EMAIL, PASSWORD, bearer, email_to, new_email, token_from

OUTAGE = 4.0  # seconds a dependency is down
CLIENTS = 4  # concurrent load clients, one verified user (with one active tenant) each
SAGA_DEADLINE = 60.0  # an accepted registration / tenant must be done this long after the dependency is back
RETRY_DEADLINE = 60.0  # a client retrying 503s gives up after this long
MAX_RETRY_WAIT = 5.0  # a client honours Retry-After, but never waits longer than this between tries

# the supervisor restarts a killed process after OUTAGE seconds (each is killed once in this module)
POLICY = RestartPolicy(initial_delay=OUTAGE, max_delay=OUTAGE, poll_interval=0.1)
LOG: list[str] = []


def _keep(name: str, line: str) -> None:
    LOG.append(f"{name} | {line}")


@dataclass
class LoadUser:
    email: str
    headers: dict[str, str]
    tenant_id: str


@dataclass
class Observed(LoadObserved):
    """Everything the load clients saw, and the sagas they started."""

    registrations: dict[str, str] = field(default_factory=dict)  # email -> user_id of an accepted (202) registration
    tenants: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # slug -> (tenant_id, owner headers)
    unfinished: list[str] = field(default_factory=list)  # saga requests never accepted within RETRY_DEADLINE


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[EmbeddedStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="prognet-faults-"))
    data_dir.chmod(0o755)  # PostgreSQL's own system user must get in
    stack = EmbeddedStack(stack_settings(data_dir / "data"), app=True, log=_keep, extra_env=FAST_EMAIL)
    try:
        await stack.start()
    except BaseException:
        print("\n".join(LOG[-100:]))
        raise
    supervisor = asyncio.create_task(stack.supervise(POLICY))
    yield stack
    assert not supervisor.done(), supervisor.result()
    await stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
async def users(stack: EmbeddedStack) -> list[LoadUser]:
    """The load's accounts: verified, logged in, each owning one active tenant."""
    result = []
    async with httpx.AsyncClient(base_url=stack.api_url or "", timeout=30) as http:
        for _ in range(CLIENTS):
            email = new_email("load")
            r = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
            assert r.status_code == 202, r.text
            r = await http.post("/v1/auth/verify", json={"token": token_from(await email_to(stack, email))})
            assert r.status_code == 200, r.text
            r = await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
            assert r.status_code == 200, r.text
            headers = bearer(r.json())
            slug = f"load-{uuid.uuid4().hex[:10]}"
            r = await http.post("/v1/tenants", json={"name": "Load", "slug": slug}, headers=headers)
            assert r.status_code == 202, r.text
            tenant_id = r.json()["tenant_id"]
            await _tenant_active(stack, http, headers, tenant_id, SAGA_DEADLINE)
            result.append(LoadUser(email, headers, tenant_id))
    return result


async def _tenant_active(
    stack: EmbeddedStack, http: httpx.AsyncClient, headers: dict[str, str], tenant_id: str, timeout: float
) -> None:
    r = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    r = await http.get(f"/v1/tenants/{tenant_id}", headers=headers)
                    if r.status_code == 200 and r.json()["status"] == "active":
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
    except TimeoutError:
        client = await TemporalClient.connect(
            stack.temporal_address, namespace=stack.temporal_namespace, data_converter=data_converter(stack.settings())
        )
        story = await history_story(client, tenant_workflow_id(uuid.UUID(tenant_id)))
        last = f"{r.headers.get('read-source')}: {r.text}" if r is not None else "no answer"
        # what the event backbone logged (a read model left behind shows there first)
        backbone = "\n".join(
            line for line in LOG if any(n in line.split(" | ", 1)[0].lower() for n in ("redis", "relay", "consum"))
        )
        where = await backbone_story(stack.postgres_dsn or "", stack.redis_url or "", tenant_id)
        raise AssertionError(
            f"tenant {tenant_id} not active after {timeout:.0f} s; GET said {last}\n{story}\n{where}\n"
            f"{backbone[-4000:]}"
        ) from None


# --- the load ----------------------------------------------------------------------------------------------


class Client(RetryingClient):
    """One load client: records every answer; retries a 503 with the same request (and Idempotency-Key)."""

    seen: Observed

    def __init__(self, http: httpx.AsyncClient, seen: Observed) -> None:
        super().__init__(http, seen, retry_deadline=RETRY_DEADLINE, max_retry_wait=MAX_RETRY_WAIT)

    async def register(self) -> None:
        email = new_email("fault")
        key = str(uuid.uuid4())
        r = await self.until_not_503(
            "register",
            "POST",
            "/v1/auth/register",
            json={"email": email, "password": PASSWORD},
            headers={"Idempotency-Key": key},
        )
        if r is not None and r.status_code == 202:
            self.seen.registrations[email] = r.json()["user_id"]
        else:
            self.seen.unfinished.append(f"register {email}: {r.status_code if r else 'no answer'}")

    async def create_tenant(self, user: LoadUser) -> None:
        slug = f"fault-{uuid.uuid4().hex[:10]}"
        r = await self.until_not_503(
            "create tenant",
            "POST",
            "/v1/tenants",
            json={"name": "Fault", "slug": slug},
            headers={**user.headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        if r is not None and r.status_code == 202:
            self.seen.tenants[slug] = (r.json()["tenant_id"], user.headers)
        else:
            self.seen.unfinished.append(f"create tenant {slug}: {r.status_code if r else 'no answer'}")

    async def run(self, user: LoadUser, stop: asyncio.Event) -> None:
        """Reads, registrations and tenant creations in three loops: one waiting for its answer holds up no other."""

        async def reads() -> None:
            while not stop.is_set():
                await self.call("login", "POST", "/v1/auth/login", json={"email": user.email, "password": PASSWORD})
                await self.call("me", "GET", "/v1/me", headers=user.headers)
                await self.call("tenants", "GET", "/v1/tenants", headers=user.headers)
                await self.call("tenant", "GET", f"/v1/tenants/{user.tenant_id}", headers=user.headers)
                await asyncio.sleep(0.2)

        async def registrations() -> None:
            while not stop.is_set():
                await self.register()
                await asyncio.sleep(0.2)

        async def tenants() -> None:
            while not stop.is_set():
                await self.create_tenant(user)
                await asyncio.sleep(0.2)

        await asyncio.gather(reads(), registrations(), tenants())


# --- the outages -------------------------------------------------------------------------------------------


async def _back(name: str, timeout: float = 60) -> None:
    """Wait until the supervisor logged that `name` is back after its (only) restart."""
    async with asyncio.timeout(timeout):
        while f"devstack | {name} is back" not in LOG:
            await asyncio.sleep(0.1)


# What the load must have had in flight while the dependency was down.
IN_FLIGHT = {"login", "me", "tenant", "register", "create tenant"}


async def _while_load_meets_it(seen: Observed, down: float) -> None:
    """A stopped dependency stays down until the load sent each kind of request into the outage (at most 30 s):
    on a loaded machine one round of the load can take longer than OUTAGE."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline and not {what for what, sent, _ in seen.spans if sent >= down} >= IN_FLIGHT:
        await asyncio.sleep(0.2)


async def _kill_redis(stack: EmbeddedStack, seen: Observed, down: float) -> None:
    assert stack.redis is not None and stack.redis.process is not None
    stack.redis.process.signal_group(signal.SIGKILL)
    await _back("Redis")


async def _kill_postgres(stack: EmbeddedStack, seen: Observed, down: float) -> None:
    # only the postmaster, as a crash would: the supervisor clears its orphaned backends
    assert stack.postgres is not None and stack.postgres.process is not None and stack.postgres.process.pid
    os.kill(stack.postgres.process.pid, signal.SIGKILL)
    await _back("PostgreSQL")


async def _kill_temporal(stack: EmbeddedStack, seen: Observed, down: float) -> None:
    assert stack.temporal is not None and stack.temporal.process is not None
    stack.temporal.process.signal_group(signal.SIGKILL)
    await _back("Temporal")


async def _stop_smtp(stack: EmbeddedStack, seen: Observed, down: float) -> None:
    assert stack.smtp is not None
    await stack.smtp.stop()
    await asyncio.sleep(OUTAGE)
    await _while_load_meets_it(seen, down)
    # a registration's email goes out a moment after its 202: stay down until one of them met the closed port
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        async with asyncio.timeout(30):
            deferred = "select count(*) from email_messages where state = 'deferred' and to_address like 'fault-%'"
            while not await conn.fetchval(deferred):
                await asyncio.sleep(0.2)
    finally:
        await conn.close()
    await stack.smtp.start()


async def _stop_stripe(stack: EmbeddedStack, seen: Observed, down: float) -> None:
    assert stack.stripe is not None
    await stack.stripe.stop()
    await asyncio.sleep(OUTAGE)
    await _while_load_meets_it(seen, down)
    await stack.stripe.start()


OUTAGES: dict[str, Callable[[EmbeddedStack, Observed, float], Awaitable[None]]] = {
    "redis": _kill_redis,
    "postgres": _kill_postgres,
    "temporal": _kill_temporal,
    "smtp": _stop_smtp,
    "stripe": _stop_stripe,
}


@pytest.mark.parametrize("dependency", list(OUTAGES))
async def test_an_outage_degrades_to_503_and_loses_nothing(
    stack: EmbeddedStack, users: list[LoadUser], dependency: str
):
    seen = Observed()
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=stack.api_url or "", timeout=30) as http:
        clients = [asyncio.create_task(Client(http, seen).run(user, stop)) for user in users]
        await asyncio.sleep(1)  # the load is running before the dependency goes
        loop = asyncio.get_running_loop()
        down = loop.time()
        await OUTAGES[dependency](stack, seen, down)
        up = loop.time()
        await asyncio.sleep(2)  # and keeps running a little after it is back
        stop.set()
        await asyncio.gather(*clients)
        # what a client saw (pytest -s shows it): answers by request, status and problem type
        print(f"\n{dependency}:", sorted(Counter((w, s, t.rsplit("/", 1)[-1]) for w, s, _, t in seen.answers).items()))

        # the load really ran into the outage: reads and saga requests were in flight while it was down
        during = {what for what, sent, answered in seen.spans if sent < up and answered > down}
        assert during >= IN_FLIGHT, during

        # every answer was 2xx, 4xx or a 503 that says when to retry; no connection was reset
        assert not seen.resets, seen.resets
        assert all(status < 500 or status == 503 for _, status, _, _ in seen.answers), _unexpected(seen)
        assert all(after for _, status, after, _ in seen.answers if status == 503), _unexpected(seen)
        assert not seen.unfinished, seen.unfinished  # a client retrying with its key was accepted in the end
        assert seen.registrations and seen.tenants  # the load did what it should

        # nobody legitimate is throttled: each load user's correct password works right away
        for user in users:
            r = await http.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
            assert r.status_code == 200, (user.email, r.status_code, r.text)

        # every accepted saga finishes: tenants active, registrations waiting with their verification email
        for tenant_id, headers in seen.tenants.values():
            await _tenant_active(stack, http, headers, tenant_id, SAGA_DEADLINE)
        await _verification_emails(stack, set(seen.registrations), SAGA_DEADLINE)

    # nothing duplicated: one user per email, one tenant per slug, one verification email per registration
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        # and the event backbone caught up: every new tenant's read-model row is complete and active (a reader
        # falls back to the primary without one, so the answers above cannot tell)
        await _overviews_active(stack, conn, [tenant_id for tenant_id, _ in seen.tenants.values()], SAGA_DEADLINE)
        rows = await conn.fetch(
            "select lower(email) as email, count(*) as n, min(status) as status from users "
            "where lower(email) = any($1::text[]) group by lower(email)",
            [e.lower() for e in seen.registrations],
        )
        assert {r["email"]: r["n"] for r in rows} == {e.lower(): 1 for e in seen.registrations}
        assert {r["status"] for r in rows} == {"pending"}  # waiting for the verification link
        rows = await conn.fetch(
            "select slug, count(*) as n from tenants where slug = any($1::text[]) group by slug", list(seen.tenants)
        )
        assert {r["slug"]: r["n"] for r in rows} == dict.fromkeys(seen.tenants, 1)
        if dependency == "smtp":  # some verification email really met the closed relay and was sent again
            attempts = await conn.fetchval(
                "select max(attempts) from email_messages where to_address = any($1::text[])", list(seen.registrations)
            )
            assert attempts > 1, attempts
    finally:
        await conn.close()
    messages: dict[str, set[str]] = {}
    for msg in read_messages(stack.maildir):
        if msg["To"] in seen.registrations:
            messages.setdefault(msg["To"], set()).add(msg["Message-ID"])
    # one Stripe customer per tenant, however often its provisioning step was retried
    assert stack.stripe is not None
    customers = Counter(c["metadata"].get("tenant_id") for c in stack.stripe.sandbox.customers())
    assert {tenant_id: customers[tenant_id] for tenant_id, _ in seen.tenants.values()} == {
        tenant_id: 1 for tenant_id, _ in seen.tenants.values()
    }
    # a resend after an SMTP failure is legitimate only as the same message (same Message-ID)
    assert {to: len(ids) for to, ids in messages.items()} == dict.fromkeys(seen.registrations, 1)


async def _overviews_active(
    stack: EmbeddedStack, conn: asyncpg.Connection, tenant_ids: list[str], timeout: float
) -> None:
    ids = [uuid.UUID(t) for t in tenant_ids]
    query = (
        "select tenant_id from rm_tenant_overview where tenant_id = any($1::uuid[]) "
        "and name is not null and status = 'active'"
    )
    try:
        async with asyncio.timeout(timeout):
            while len(await conn.fetch(query, ids)) < len(ids):
                await asyncio.sleep(0.2)
    except TimeoutError:
        done = {r["tenant_id"] for r in await conn.fetch(query, ids)}
        behind = [t for t in ids if t not in done]
        where = await backbone_story(stack.postgres_dsn or "", stack.redis_url or "", behind[0])
        raise AssertionError(f"{len(behind)} tenants' overviews not active after {timeout:.0f} s\n{where}") from None


async def _verification_emails(stack: EmbeddedStack, addresses: set[str], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            delivered = {msg["To"] for msg in read_messages(stack.maildir)}
            if addresses <= delivered:
                return
            await asyncio.sleep(0.2)


def _unexpected(seen: Observed) -> list[tuple[str, int, str | None, str]]:
    return [a for a in seen.answers if (a[1] >= 500 and a[1] != 503) or (a[1] == 503 and not a[2])]

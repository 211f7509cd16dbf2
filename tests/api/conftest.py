"""HTTP-level fixtures on real services: the embedded stack's PostgreSQL, Redis, Temporal and SMTP sink.

Temporal is pointed at a closed port unless a test asks for the `api` fixture, which uses the stack's
Temporal dev server and runs the real worker in-process.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import select
from temporalio.client import Client

from api.app import create_app
from models.db import transaction
from models.names import email_message_id, email_workflow_id, invitation_workflow_id
from models.tables import EmailMessage as EmailRow
from models.tables import Membership, Tenant, User, VerificationToken
from prognet import tokens
from prognet.payload_codec import data_converter
from prognet.settings import Settings
from prognet_dev import EmbeddedStack, SandboxAdmin, free_port, message_text, read_messages, stack_settings
from workers.main import build_workers

PASSWORD = "correct horse battery staple"
# Cheap argon2 for tests; the production parameters are the settings' defaults.
ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 8192, "argon2_parallelism": 1}
SECRET_KEY = "test-secret-" + "k" * 40  # the payload key is derived from it: the worker, API and tests share it


@pytest.fixture(scope="session")
async def services() -> AsyncIterator[EmbeddedStack]:
    """PostgreSQL (migrated), Redis, a Temporal dev server and the SMTP sink, as `prognet dev` starts them."""
    # Not under pytest's tmp dir: a concurrent pytest run resets that tree to mode 0700, which locks out the
    # dedicated system user PostgreSQL runs as when we are root.
    base = Path(tempfile.mkdtemp(prefix="prognet-api-"))
    base.chmod(0o755)
    async with EmbeddedStack(stack_settings(base / "data"), log=lambda name, line: None) as stack:
        yield stack
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(services: EmbeddedStack) -> str:
    return services.database_url


@pytest.fixture(scope="session")
def redis_url(services: EmbeddedStack) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def schema(services: EmbeddedStack) -> None:
    assert services.migrations_applied  # the real Alembic migrations, not create_all


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="development",
        data_dir=tmp_path,
        secret_key=SECRET_KEY,
        database_url=database_url,
        redis_url=redis_url,
        temporal_address=f"127.0.0.1:{free_port()}",  # nothing listens there
        log_level="WARNING",
        **ARGON2,
    )


@pytest.fixture
async def app(settings: Settings, schema: None) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.redis.flushdb()
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


@pytest.fixture
def engine(app: FastAPI) -> AsyncEngine:
    return app.state.engine


@pytest.fixture
def redis(app: FastAPI) -> Redis:
    return app.state.redis


@dataclass
class Account:
    id: uuid.UUID
    email: str
    password: str = PASSWORD


async def insert_user(
    engine: AsyncEngine, *, status: str = "active", password_hash: str | None = None, email: str | None = None
) -> Account:
    account = Account(id=uuid.uuid4(), email=email or f"user-{uuid.uuid4().hex[:10]}@Example.com")
    hashed = password_hash or PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    async with transaction(engine) as db:
        db.add(User(id=account.id, email=account.email, display_name="Test User", password_hash=hashed, status=status))
    return account


@pytest.fixture
async def user(engine: AsyncEngine) -> Account:
    return await insert_user(engine)


async def login(client: httpx.AsyncClient, account: Account) -> dict:
    response = await client.post("/v1/auth/login", json={"email": account.email, "password": account.password})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"https://prognet.dev/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["instance"]
    return body


# --- Temporal: a dev server from the wheel, the real worker, an SMTP sink -------------------------------


@pytest.fixture
async def stripe(services: EmbeddedStack) -> AsyncIterator[SandboxAdmin]:
    """The stack's Stripe sandbox, to look at what the real SDK calls left there."""
    async with SandboxAdmin(services.stripe_api_base) as admin:
        yield admin


@pytest.fixture(scope="session")
async def temporal_client(services: EmbeddedStack) -> Client:
    converter = data_converter(Settings(secret_key=SECRET_KEY))  # the codec of the worker and the API below
    return await Client.connect(services.temporal_address, data_converter=converter)


@pytest.fixture(scope="session")
async def temporal_settings(
    services: EmbeddedStack, temporal_client: Client, schema: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    """Settings for the API and the worker on the same Temporal server; the worker runs while they live."""
    # The stack's Stripe sandbox, once the stack runs one (tenant provisioning creates Stripe customers).
    stripe = (
        {"stripe_api_base": services.stripe_api_base, "stripe_secret_key": services.stripe_secret_key}
        if getattr(services, "stripe_api_base", None)
        else {}
    )
    settings = Settings(
        environment="development",
        data_dir=tmp_path_factory.mktemp("data"),
        secret_key=SECRET_KEY,
        database_url=services.database_url,
        redis_url=services.redis_url,
        temporal_address=services.temporal_address,
        smtp_host=services.smtp_host,
        smtp_port=services.smtp_port,
        log_level="WARNING",
        **stripe,
        **ARGON2,
    )
    engine = create_async_engine(services.database_url)
    async with build_workers(temporal_client, engine, settings):
        yield settings
    await engine.dispose()


@pytest.fixture
async def temporal_app(temporal_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(temporal_settings)
    async with app.router.lifespan_context(app):
        await app.state.redis.flushdb()
        yield app


@pytest.fixture
async def api(temporal_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=temporal_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


# --- tenants and invitations: people, tenants, emailed invitation tokens -----------------------------------------


@dataclass
class Person:
    """A logged-in user: the account and its bearer header."""

    account: Account
    headers: dict[str, str]

    @property
    def id(self) -> uuid.UUID:
        return self.account.id

    @property
    def email(self) -> str:
        return self.account.email


@pytest.fixture
def app_engine(temporal_app: FastAPI) -> AsyncEngine:
    """The API's own engine: the RLS-bound application role."""
    return temporal_app.state.engine


async def person(api: httpx.AsyncClient, engine: AsyncEngine, email: str | None = None) -> Person:
    account = await insert_user(engine, email=email)
    return Person(account, bearer((await login(api, account))["access_token"]))


def new_slug(prefix: str = "org") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_tenant(api: httpx.AsyncClient, owner: Person, slug: str | None = None, **extra: object) -> dict:
    body = {"name": "Acme Labs", "slug": slug or new_slug(), **extra}
    response = await api.post("/v1/tenants", json=body, headers=owner.headers)
    assert response.status_code == 202, response.text
    return response.json()


async def wait_for_tenant(
    api: httpx.AsyncClient, who: Person, tenant_id: str, status: str = "active", timeout: float = 30.0
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(f"/v1/tenants/{tenant_id}", headers=who.headers)
        if response.status_code == 200 and response.json()["status"] == status:
            return response.json()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"tenant {tenant_id} never became {status}: {response.status_code} {response.text}")
        await asyncio.sleep(0.1)


async def active_tenant(api: httpx.AsyncClient, owner: Person, **extra: object) -> str:
    tenant_id = (await create_tenant(api, owner, **extra))["tenant_id"]
    await wait_for_tenant(api, owner, tenant_id)
    return tenant_id


async def add_member(engine: AsyncEngine, tenant_id: str | uuid.UUID, user_id: uuid.UUID, role: str) -> None:
    """Set up a membership directly (through the application role, inside the tenant's transaction)."""
    tid = uuid.UUID(str(tenant_id))
    async with transaction(engine, tenant_id=tid) as db:
        db.add(Membership(tenant_id=tid, user_id=user_id, role=role))


async def invite(api: httpx.AsyncClient, who: Person, tenant_id: str, email: str, role: str = "member") -> dict:
    response = await api.post(
        f"/v1/tenants/{tenant_id}/invitations", json={"email": email, "role": role}, headers=who.headers
    )
    assert response.status_code == 202, response.text
    return response.json()


async def emailed_invitation_token(
    maildir: Path, invitation_id: str, timeout: float = 20.0
) -> tuple[EmailMessage, str]:
    """The invitation email of this invitation (found by its Message-ID) and the token from its link."""
    marker = str(email_message_id(invitation_workflow_id(invitation_id), "invite"))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for msg in read_messages(maildir):
            if marker in str(msg.get("Message-ID", "")):
                match = re.search(r"/accept-invitation\?token=([A-Za-z0-9._~%-]+)", message_text(msg))
                assert match, message_text(msg)
                return msg, unquote(match.group(1))
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no invitation email for {invitation_id}")
        await asyncio.sleep(0.1)


async def wait_for_invitation(
    api: httpx.AsyncClient,
    who: Person,
    tenant_id: str,
    invitation_id: str,
    status: str = "pending",
    timeout: float = 20.0,
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(f"/v1/tenants/{tenant_id}/invitations/{invitation_id}", headers=who.headers)
        if response.status_code == 200 and response.json()["status"] == status:
            return response.json()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"invitation never {status}: {response.status_code} {response.text}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def stripe_faults(services: EmbeddedStack, temporal_settings: Settings) -> AsyncIterator:
    """Add faults to the stack's Stripe sandbox (`/_sandbox/faults`); all are cleared after the test."""
    base = getattr(services, "stripe_api_base", None)
    assert base, "the embedded stack runs no Stripe sandbox"
    async with httpx.AsyncClient(base_url=base) as sandbox:

        async def add(spec: dict) -> dict:
            response = await sandbox.post("/_sandbox/faults", json=spec)
            assert response.status_code == 201, response.text
            return response.json()

        yield add
        await sandbox.delete("/_sandbox/faults")


# --- email tracking: tenants, messages and operators set up directly (no saga needed) ------------------------


async def insert_tenant(
    engine: AsyncEngine, owner: uuid.UUID, *, name: str = "Acme Labs", members: dict[uuid.UUID, str] | None = None
) -> uuid.UUID:
    """An active tenant owned by `owner` (plus `members`: user id → role), inside the tenant's own transaction."""
    tid = uuid.uuid4()
    async with transaction(engine, tenant_id=tid) as db:
        db.add(Tenant(id=tid, name=name, slug=new_slug("mail"), status="active", created_by=owner))
        await db.flush()
        for user_id, role in {owner: "owner", **(members or {})}.items():
            db.add(Membership(tenant_id=tid, user_id=user_id, role=role))
    return tid


async def insert_email(engine: AsyncEngine, tenant_id: uuid.UUID | None, **fields: object) -> EmailRow:
    """A tracking row as the delivery workflow would leave it (tenant_id None: platform mail)."""
    message_id = fields.pop("id", None) or uuid.uuid4()
    row = EmailRow(
        id=message_id,
        tenant_id=tenant_id,
        workflow_id=email_workflow_id(message_id),
        **{
            "template": "notice",
            "to_address": f"to-{uuid.uuid4().hex[:8]}@example.com",
            "subject": "Hi",
            "state": "sent",
            "attempts": 1,
            **fields,
        },
    )
    async with transaction(engine, tenant_id=tenant_id, platform=tenant_id is None) as db:
        db.add(row)
    return row


async def make_platform_admin(engine: AsyncEngine, user_id: uuid.UUID, granted: bool = True) -> None:
    """What `prognet admin grant EMAIL` does."""
    async with transaction(engine) as db:
        user = await db.get(User, user_id)
        assert user is not None
        user.is_platform_admin = granted
        db.add(user)


async def token_for(temporal_app, user_id: str) -> str:
    async with transaction(temporal_app.state.engine) as db:
        row = (await db.exec(select(VerificationToken).where(VerificationToken.user_id == uuid.UUID(user_id)))).one()
    return tokens.derive_token(temporal_app.state.settings.derived_key("tokens"), tokens.VERIFY_EMAIL, row.id)


async def wait_for_token(temporal_app, user_id: str) -> str:
    import asyncio

    for _ in range(100):
        try:
            return await token_for(temporal_app, user_id)
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("no verification token was issued")

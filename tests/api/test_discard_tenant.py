"""`tenants.discard_tenant` (the paid sign-up's unwinding) on the real database, through the application role."""

from __future__ import annotations

import uuid

import asyncpg
from temporalio.testing import ActivityEnvironment

from activities.tenants import TenantActivities
from models.signup_contracts import DiscardTenant
from tests.api.conftest import active_tenant, person

OWNED = ("memberships", "tenant_billing", "tenant_settings", "subscriptions", "invoices", "invoice_counters")


async def test_discarding_a_tenant_leaves_no_row_behind_but_the_audit_trail(api, app_engine, services):
    owner = await person(api, app_engine)
    tid = uuid.UUID(await active_tenant(api, owner))
    db = await asyncpg.connect(services.postgres_dsn)  # the owner: sees every tenant's rows
    try:
        sub = uuid.uuid4()
        await db.execute(
            "insert into subscriptions(id, tenant_id, plan_id, status, payment_method, workflow_id) "
            "values ($1, $2, 'dev-minutely', 'incomplete', 'pm_card_visa', 'x')",
            sub,
            tid,
        )
        await db.execute("insert into invoice_counters(tenant_id, last_number) values ($1, 1)", tid)
        await db.execute(
            "insert into invoices(id, tenant_id, subscription_id, number, workflow_id, kind, period_index, "
            "period_start, period_end, plan_id, amount, currency, status) values ($1, $2, $3, 1, 'w', "
            "'period', 0, now(), now(), 'dev-minutely', 100, 'eur', 'uncollectible')",
            uuid.uuid4(),
            tid,
            sub,
        )

        activities = TenantActivities(app_engine)
        req = DiscardTenant(tenant_id=tid, workflow_id=f"signup-{owner.id}", reason="payment declined")
        await ActivityEnvironment().run(activities.discard_tenant, req)
        await ActivityEnvironment().run(activities.discard_tenant, req)  # a retry: nothing left, no error

        assert await db.fetchval("select count(*) from tenants where id = $1", tid) == 0
        for table in OWNED:
            assert await db.fetchval(f"select count(*) from {table} where tenant_id = $1", tid) == 0, table
        events = await db.fetch(
            "select type from domain_events where tenant_id = $1 and type = 'tenant.discarded'", tid
        )
        assert len(events) == 1
        assert await db.fetchval("select count(*) from users where id = $1", owner.id) == 1  # the user is not ours
    finally:
        await db.close()

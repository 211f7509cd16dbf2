"""Tenant provisioning over real HTTP with the worker and API as child processes and the Stripe sandbox."""

from __future__ import annotations

import uuid

import asyncpg

from prognet_dev import EmbeddedStack
from tests.integration.conftest import email_to, owner_headers, wait_for_status


async def test_tenant_becomes_active_with_its_stripe_customer(http, stack: EmbeddedStack):
    headers = await owner_headers(http, stack)
    slug = f"acme-{uuid.uuid4().hex[:8]}"
    r = await http.post(
        "/v1/tenants", json={"name": "Acme", "slug": slug, "billing_email": "billing@acme.example"}, headers=headers
    )
    assert r.status_code == 202, r.text
    tenant_id = r.json()["tenant_id"]
    tenant = await wait_for_status(http, headers, tenant_id, {"active"})
    customer_id = tenant["billing"]["stripe_customer_id"]

    customers = {c["id"]: c for c in stack.stripe.sandbox.customers()}
    assert customers[customer_id]["metadata"]["tenant_id"] == tenant_id
    assert customers[customer_id]["email"] == "billing@acme.example"
    welcome = await email_to(stack, (await http.get("/v1/me", headers=headers)).json()["email"], subject="Acme")
    assert "Acme" in welcome["Subject"]

    again = await http.post("/v1/tenants", json={"name": "Other", "slug": slug}, headers=headers)
    assert again.status_code == 409 and again.json()["type"].endswith("slug-taken")


async def test_permanent_stripe_failure_leaves_a_failed_tenant_and_no_orphans(http, stack: EmbeddedStack):
    headers = await owner_headers(http, stack)
    stack.stripe.sandbox.inject_fault(400, count=1, path_prefix="/v1/customers", method="POST")
    slug = f"doomed-{uuid.uuid4().hex[:8]}"
    r = await http.post("/v1/tenants", json={"name": "Doomed", "slug": slug}, headers=headers)
    assert r.status_code == 202, r.text
    tenant_id = r.json()["tenant_id"]
    tenant = await wait_for_status(http, headers, tenant_id, {"failed"})
    assert "StripePermanentError" in tenant["failure_reason"]

    owner = await asyncpg.connect(stack.postgres_dsn)  # the owner sees past row-level security
    try:
        for table in ("memberships", "tenant_billing", "tenant_settings", "invitations"):
            assert (
                await owner.fetchval(f"select count(*) from {table} where tenant_id = $1", uuid.UUID(tenant_id)) == 0
            ), table
        assert await owner.fetchval("select status from tenants where id = $1", uuid.UUID(tenant_id)) == "failed"
    finally:
        await owner.close()
    live = [c for c in stack.stripe.sandbox.customers() if c["metadata"].get("tenant_id") == tenant_id]
    assert live == []

    # the failed tenant does not keep its slug: the organisation can be created again
    again = await http.post("/v1/tenants", json={"name": "Doomed", "slug": slug}, headers=headers)
    assert again.status_code == 202, again.text
    await wait_for_status(http, headers, again.json()["tenant_id"], {"active"})

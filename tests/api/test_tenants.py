"""Tenants over HTTP on the real stack: provisioning saga, status, members, roles, leaving."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlmodel import select

from models.db import transaction
from models.names import SA_TENANT_ID, SA_USER_ID, tenant_workflow_id
from models.tables import DomainEvent
from tests.api.conftest import (
    active_tenant,
    add_member,
    assert_problem,
    create_tenant,
    new_slug,
    person,
    wait_for_tenant,
)
from tests.support.workflows import history_story


async def _events(engine, tenant_id: str, type_: str) -> list[DomainEvent]:
    async with transaction(engine, tenant_id=uuid.UUID(tenant_id)) as db:
        return list(
            (await db.exec(select(DomainEvent).where(DomainEvent.type == type_).order_by(DomainEvent.id))).all()
        )


async def test_create_tenant_runs_the_saga_until_active(api, app_engine, temporal_client):
    owner = await person(api, app_engine)
    slug = new_slug("acme")
    accepted = await create_tenant(api, owner, slug=slug, name="  Acme Labs  ", billing_email="billing@acme.example")
    tid = accepted["tenant_id"]
    wid = accepted["workflow_id"]
    assert wid == tenant_workflow_id(tid) and accepted["status"] == "provisioning"
    assert accepted["links"] == {"self": f"/v1/tenants/{tid}", "workflow": f"/v1/workflows/{wid}"}

    view = await wait_for_tenant(api, owner, tid)
    assert view["name"] == "Acme Labs" and view["slug"] == slug and view["role"] == "owner"
    assert view["activated_at"] and view["failure_reason"] is None and view["saga"] is None
    assert view["billing"]["currency"] == "eur" and view["billing"]["billing_email"] == "billing@acme.example"
    assert view["billing"]["stripe_customer_id"].startswith("cus_")

    mine = (await api.get("/v1/tenants", headers=owner.headers)).json()
    assert [(t["id"], t["role"], t["status"]) for t in mine] == [(tid, "owner", "active")]
    members = (await api.get(f"/v1/tenants/{tid}/members", headers=owner.headers)).json()
    assert [(m["user_id"], m["email"], m["role"]) for m in members] == [(str(owner.id), owner.email, "owner")]

    # Operators find it by tenant and by user; the caller follows it as one of their workflows.
    description = await temporal_client.get_workflow_handle(wid).describe()
    assert description.typed_search_attributes.get(SA_TENANT_ID) == tid
    assert description.typed_search_attributes.get(SA_USER_ID) == str(owner.id)
    workflow = (await api.get(f"/v1/workflows/{wid}", headers=owner.headers)).json()
    assert workflow["type"] == "TenantProvisioning" and workflow["saga"]["status"] == "completed"

    # Nobody else sees it, listed or by id.
    stranger = await person(api, app_engine)
    assert (await api.get("/v1/tenants", headers=stranger.headers)).json() == []
    assert_problem(await api.get(f"/v1/tenants/{tid}", headers=stranger.headers), 404, "not-found")


async def test_saga_state_is_shown_while_provisioning(api, app_engine, stripe_faults):
    owner = await person(api, app_engine)
    await stripe_faults({"status": 500, "count": 3, "path_prefix": "/v1/customers", "method": "POST"})
    tid = (await create_tenant(api, owner))["tenant_id"]
    view = (await api.get(f"/v1/tenants/{tid}", headers=owner.headers)).json()
    assert view["status"] == "provisioning", view
    assert view["saga"]["saga"] == "tenant_provisioning"
    assert "create_tenant" in view["saga"]["completed_steps"]
    assert view["billing"] is None
    # Once the owner membership exists (the saga still retries Stripe): a member, but no invitations yet.
    for _ in range(50):
        view = (await api.get(f"/v1/tenants/{tid}", headers=owner.headers)).json()
        if view["role"] == "owner":
            break
        await asyncio.sleep(0.1)
    assert view["role"] == "owner" and view["status"] == "provisioning", view
    assert view["saga"]["step"] == "create_stripe_customer", view["saga"]
    assert_problem(
        await api.post(f"/v1/tenants/{tid}/invitations", json={"email": "x@example.com"}, headers=owner.headers),
        409,
        "tenant-not-active",
    )
    final = await wait_for_tenant(api, owner, tid, timeout=60)
    assert final["saga"] is None and final["billing"]["stripe_customer_id"]


async def test_failed_provisioning_is_visible_to_its_creator_only(api, app_engine, stripe_faults):
    owner = await person(api, app_engine)
    await stripe_faults(
        {
            "status": 400,
            "count": 1,
            "path_prefix": "/v1/customers",
            "method": "POST",
            "message": "Invalid email address",
        }
    )
    tid = (await create_tenant(api, owner))["tenant_id"]
    view = await wait_for_tenant(api, owner, tid, status="failed", timeout=60)
    assert view["failure_reason"] and view["role"] is None and view["billing"] is None and view["saga"] is None
    assert (await api.get("/v1/tenants", headers=owner.headers)).json() == []  # compensated: not a member
    assert_problem(await api.get(f"/v1/tenants/{tid}/members", headers=owner.headers), 404, "not-found")
    stranger = await person(api, app_engine)
    assert_problem(await api.get(f"/v1/tenants/{tid}", headers=stranger.headers), 404, "not-found")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Acme", "slug": "ab"},
        {"name": "Acme", "slug": "a" * 41},
        {"name": "Acme", "slug": "Acme-Labs"},
        {"name": "Acme", "slug": "-acme"},
        {"name": "Acme", "slug": "acme-"},
        {"name": "Acme", "slug": "acme labs"},
        {"name": "Acme", "slug": "acme_labs"},
        {"name": "Acme", "slug": "acmé-labs"},
        {"name": "", "slug": "acme-labs"},
        {"name": "   ", "slug": "acme-labs"},
        {"name": "x" * 201, "slug": "acme-labs"},
        {"name": "Acme", "slug": "acme-labs", "billing_email": "not-an-email"},
        {"name": "Acme", "slug": "acme-labs", "plan": "pro"},
        {"slug": "acme-labs"},
    ],
)
async def test_invalid_tenant_requests_are_422(api, app_engine, body):
    owner = await person(api, app_engine)
    body_ = assert_problem(await api.post("/v1/tenants", json=body, headers=owner.headers), 422, "validation-failed")
    assert body_["errors"]
    assert (await api.get("/v1/tenants", headers=owner.headers)).json() == []


async def test_creating_a_tenant_needs_a_login(api):
    assert_problem(await api.post("/v1/tenants", json={"name": "Acme", "slug": new_slug()}), 401, "unauthenticated")
    assert_problem(await api.get("/v1/tenants"), 401, "unauthenticated")


async def test_taken_slug_is_409(api, app_engine):
    first, second = await person(api, app_engine), await person(api, app_engine)
    slug = new_slug("taken")
    await active_tenant(api, first, slug=slug)
    body = assert_problem(
        await api.post("/v1/tenants", json={"name": "Other", "slug": slug}, headers=second.headers), 409, "slug-taken"
    )
    assert "Acme" not in body["detail"]
    assert (await api.get("/v1/tenants", headers=second.headers)).json() == []


async def test_idempotency_key_returns_the_same_tenant(api, app_engine):
    owner = await person(api, app_engine)
    slug, key = new_slug(), f"key-{uuid.uuid4()}"
    body = {"name": "Acme", "slug": slug}
    first = await api.post("/v1/tenants", json=body, headers={**owner.headers, "Idempotency-Key": key})
    again = await api.post("/v1/tenants", json=body, headers={**owner.headers, "Idempotency-Key": key})
    assert first.status_code == again.status_code == 202, again.text
    assert first.json()["tenant_id"] == again.json()["tenant_id"]
    assert first.headers["Location"] == again.headers["Location"] == f"/v1/tenants/{first.json()['tenant_id']}"
    await wait_for_tenant(api, owner, first.json()["tenant_id"])
    after = await api.post("/v1/tenants", json=body, headers={**owner.headers, "Idempotency-Key": key})
    assert after.status_code == 202 and after.json()["status"] == "active"
    other = await api.post(
        "/v1/tenants", json={"name": "Acme", "slug": new_slug()}, headers={**owner.headers, "Idempotency-Key": key}
    )
    assert_problem(other, 422, "idempotency-key-reused")
    assert len((await api.get("/v1/tenants", headers=owner.headers)).json()) == 1


async def test_role_changes_follow_the_owner_rules(api, app_engine):
    owner = await person(api, app_engine)
    admin = await person(api, app_engine)
    member = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    await add_member(app_engine, tid, admin.id, "admin")
    await add_member(app_engine, tid, member.id, "member")
    url = f"/v1/tenants/{tid}/members"

    assert_problem(
        await api.patch(f"{url}/{admin.id}", json={"role": "member"}, headers=member.headers), 403, "forbidden"
    )
    promoted = await api.patch(f"{url}/{member.id}", json={"role": "admin"}, headers=admin.headers)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin" and promoted.json()["email"] == member.email
    # Only an owner grants or takes away `owner`.
    assert_problem(
        await api.patch(f"{url}/{member.id}", json={"role": "owner"}, headers=admin.headers), 403, "forbidden"
    )
    assert_problem(
        await api.patch(f"{url}/{owner.id}", json={"role": "member"}, headers=admin.headers), 403, "forbidden"
    )
    # The last owner cannot be demoted.
    assert_problem(
        await api.patch(f"{url}/{owner.id}", json={"role": "admin"}, headers=owner.headers), 409, "last-owner"
    )
    assert (await api.patch(f"{url}/{admin.id}", json={"role": "owner"}, headers=owner.headers)).json()[
        "role"
    ] == "owner"
    demoted = await api.patch(f"{url}/{owner.id}", json={"role": "member"}, headers=owner.headers)
    assert demoted.status_code == 200 and demoted.json()["role"] == "member"
    assert_problem(
        await api.patch(f"{url}/{admin.id}", json={"role": "admin"}, headers=admin.headers), 409, "last-owner"
    )

    assert_problem(
        await api.patch(f"{url}/{uuid.uuid4()}", json={"role": "admin"}, headers=admin.headers), 404, "not-found"
    )
    assert_problem(
        await api.patch(f"{url}/{member.id}", json={"role": "boss"}, headers=admin.headers), 422, "validation-failed"
    )
    roles = {m["user_id"]: m["role"] for m in (await api.get(url, headers=member.headers)).json()}
    assert roles == {str(owner.id): "member", str(admin.id): "owner", str(member.id): "admin"}
    events = await _events(app_engine, tid, "member.role_changed")
    assert [(e.payload["user_id"], e.payload["from"], e.payload["to"]) for e in events] == [
        (str(member.id), "member", "admin"),
        (str(admin.id), "admin", "owner"),
        (str(owner.id), "owner", "member"),
    ]
    assert all(e.tenant_id == uuid.UUID(tid) for e in events)


async def test_removing_members_and_leaving(api, app_engine):
    owner, admin, member, other = [await person(api, app_engine) for _ in range(4)]
    tid = await active_tenant(api, owner)
    for who, role in ((admin, "admin"), (member, "member"), (other, "member")):
        await add_member(app_engine, tid, who.id, role)
    url = f"/v1/tenants/{tid}/members"

    assert_problem(await api.delete(f"{url}/{other.id}", headers=member.headers), 403, "forbidden")
    assert_problem(await api.delete(f"{url}/{owner.id}", headers=admin.headers), 403, "forbidden")
    assert_problem(await api.delete(f"{url}/{owner.id}", headers=owner.headers), 409, "last-owner")
    assert_problem(await api.delete(f"{url}/{uuid.uuid4()}", headers=owner.headers), 404, "not-found")

    left = await api.delete(f"{url}/{member.id}", headers=member.headers)  # leave
    assert left.status_code == 204 and left.content == b""
    assert_problem(await api.get(f"/v1/tenants/{tid}", headers=member.headers), 404, "not-found")
    assert (await api.get("/v1/tenants", headers=member.headers)).json() == []

    assert (await api.delete(f"{url}/{other.id}", headers=admin.headers)).status_code == 204
    assert (await api.delete(f"{url}/{admin.id}", headers=owner.headers)).status_code == 204
    assert [m["user_id"] for m in (await api.get(url, headers=owner.headers)).json()] == [str(owner.id)]
    assert_problem(await api.get(url, headers=admin.headers), 404, "not-found")

    events = await _events(app_engine, tid, "member.removed")
    assert [(e.payload["user_id"], e.payload["left"]) for e in events] == [
        (str(member.id), True),
        (str(other.id), False),
        (str(admin.id), False),
    ]


async def test_a_finished_saga_tells_its_story(api, app_engine, temporal_client):
    """What a test prints when a saga did not finish in time (tests/support/workflows.history_story)."""
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    workflow_id = tenant_workflow_id(uuid.UUID(tid))
    await temporal_client.get_workflow_handle(workflow_id).result()
    story = (await history_story(temporal_client, workflow_id, last=3)).splitlines()
    assert story[0] == f"{workflow_id}: COMPLETED"
    assert len(story) == 4 and story[-1].endswith("WORKFLOW_EXECUTION_COMPLETED")

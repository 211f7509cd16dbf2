"""Tenant isolation over HTTP: tenant A's owner tries every tenant-scoped endpoint with tenant B's ids.

Each answer is a 404 exactly like a missing resource (never 403: existence is not confirmed) and carries none
of B's data; afterwards B is unchanged. The same holds one level down: the application role sees no tenant row
without the tenant setting (tests/integration has the raw SQL checks).
"""

from __future__ import annotations

import json
import uuid

from sqlmodel import select

from models.db import transaction
from models.tables import Invitation, Membership, Tenant
from tests.api.conftest import (
    active_tenant,
    add_member,
    assert_problem,
    emailed_invitation_token,
    invite,
    person,
    wait_for_invitation,
)

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "trace_id"}  # trace_id: this request's own


async def test_another_tenants_ids_answer_404_and_reveal_nothing(api, app_engine, services):
    # Tenant A: an owner, a member, an invitation. Tenant B: the same, with recognisable data.
    owner_a, member_a = await person(api, app_engine), await person(api, app_engine)
    owner_b, member_b = await person(api, app_engine), await person(api, app_engine)
    tenant_a = await active_tenant(api, owner_a, name="Alpha Open Ltd")
    tenant_b = await active_tenant(api, owner_b, name="Beta Secret Corp")
    await add_member(app_engine, tenant_a, member_a.id, "member")
    await add_member(app_engine, tenant_b, member_b.id, "member")
    invitee_a, invitee_b = f"alpha-{uuid.uuid4().hex[:8]}@example.com", f"beta-{uuid.uuid4().hex[:8]}@example.com"
    inv_a = (await invite(api, owner_a, tenant_a, invitee_a))["invitation_id"]
    inv_b = (await invite(api, owner_b, tenant_b, invitee_b, role="admin"))["invitation_id"]
    await wait_for_invitation(api, owner_a, tenant_a, inv_a)
    await wait_for_invitation(api, owner_b, tenant_b, inv_b)
    secrets_of_b = [str(member_b.id), member_b.email.lower(), invitee_b, "Beta Secret Corp", str(owner_b.id)]

    b = f"/v1/tenants/{tenant_b}"
    a = f"/v1/tenants/{tenant_a}"
    attempts = [
        ("GET", b, None),
        ("GET", f"{b}/members", None),
        ("PATCH", f"{b}/members/{member_b.id}", {"role": "admin"}),
        ("PATCH", f"{b}/members/{owner_b.id}", {"role": "member"}),
        ("DELETE", f"{b}/members/{member_b.id}", None),
        ("DELETE", f"{b}/members/{owner_a.id}", None),  # "leave" a tenant one is not in
        ("POST", f"{b}/invitations", {"email": owner_a.email, "role": "admin"}),
        ("GET", f"{b}/invitations", None),
        ("GET", f"{b}/invitations/{inv_b}", None),
        ("DELETE", f"{b}/invitations/{inv_b}", None),
        # A's own tenant with B's member and invitation ids
        ("PATCH", f"{a}/members/{member_b.id}", {"role": "admin"}),
        ("DELETE", f"{a}/members/{member_b.id}", None),
        ("GET", f"{a}/invitations/{inv_b}", None),
        ("DELETE", f"{a}/invitations/{inv_b}", None),
    ]
    for method, url, body in attempts:
        response = await api.request(method, url, json=body, headers=owner_a.headers)
        problem = assert_problem(response, 404, "not-found")
        assert set(problem) == PROBLEM_KEYS, (method, url, problem)
        leaked = [s for s in secrets_of_b if s in json.dumps({k: v for k, v in problem.items() if k != "instance"})]
        assert not leaked, (method, url, leaked)
        # The same request for a tenant that does not exist answers the very same way.
        ghost = await api.request(method, url.replace(tenant_b, str(uuid.uuid4())), json=body, headers=owner_a.headers)
        if url.startswith(b):
            assert (ghost.status_code, ghost.json()["detail"]) == (404, problem["detail"]), (method, url)

    # A's owner lists only A; B is untouched.
    assert [t["id"] for t in (await api.get("/v1/tenants", headers=owner_a.headers)).json()] == [tenant_a]
    members_b = {m["user_id"]: m["role"] for m in (await api.get(f"{b}/members", headers=owner_b.headers)).json()}
    assert members_b == {str(owner_b.id): "owner", str(member_b.id): "member"}
    assert (await wait_for_invitation(api, owner_b, tenant_b, inv_b))["status"] == "pending"
    assert len((await api.get(f"{b}/invitations", headers=owner_b.headers)).json()) == 1

    # B's invitation token, used by A's owner (whose email does not match): refused, no membership.
    _, token_b = await emailed_invitation_token(services.maildir, inv_b)
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": token_b}, headers=owner_a.headers),
        403,
        "invitation-email-mismatch",
    )
    # B's secret under A's tenant id: A's rows are opened, B's invitation is not among them.
    forged = f"{tenant_a}.{token_b.partition('.')[2]}"
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": forged}, headers=owner_a.headers), 400, "invalid-token"
    )
    assert_problem(await api.get(b, headers=owner_a.headers), 404, "not-found")
    assert str(owner_a.id) not in {
        m["user_id"] for m in (await api.get(f"{b}/members", headers=owner_b.headers)).json()
    }

    # Under the API, the application role itself: no tenant setting → nothing; A's setting → only A.
    async with transaction(app_engine) as db:
        assert (await db.exec(select(Tenant))).all() == []
        assert (await db.exec(select(Invitation))).all() == []
        assert (await db.exec(select(Membership))).all() == []
    async with transaction(app_engine, tenant_id=uuid.UUID(tenant_a)) as db:
        assert {str(t.id) for t in (await db.exec(select(Tenant))).all()} == {tenant_a}
        assert {str(i.tenant_id) for i in (await db.exec(select(Invitation))).all()} == {tenant_a}
        assert {str(m.tenant_id) for m in (await db.exec(select(Membership))).all()} == {tenant_a}


async def test_member_of_two_tenants_sees_each_only_through_its_own_id(api, app_engine):
    owner_a, owner_b, both = (
        await person(api, app_engine),
        await person(api, app_engine),
        await person(api, app_engine),
    )
    tenant_a = await active_tenant(api, owner_a)
    tenant_b = await active_tenant(api, owner_b)
    await add_member(app_engine, tenant_a, both.id, "admin")
    await add_member(app_engine, tenant_b, both.id, "member")
    listed = {t["id"]: t["role"] for t in (await api.get("/v1/tenants", headers=both.headers)).json()}
    assert listed == {tenant_a: "admin", tenant_b: "member"}
    # Admin rights in A give nothing in B: B's invitations stay closed to a plain member.
    assert_problem(await api.get(f"/v1/tenants/{tenant_b}/invitations", headers=both.headers), 403, "forbidden")
    a_members = {m["user_id"] for m in (await api.get(f"/v1/tenants/{tenant_a}/members", headers=both.headers)).json()}
    assert a_members == {str(owner_a.id), str(both.id)}
    # An admin of A cannot touch B's owner through A's path.
    assert_problem(
        await api.delete(f"/v1/tenants/{tenant_a}/members/{owner_b.id}", headers=both.headers), 404, "not-found"
    )

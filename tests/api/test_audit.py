"""The audit trail over HTTP: /v1/me/events and /v1/tenants/{id}/events, their pages and filters, isolation by
row-level security, and what an event may never carry."""

from __future__ import annotations

import re
import uuid

from sqlmodel import select

from models.db import transaction
from models.event_catalogue import parse_payload
from models.events import record_event
from models.tables import DomainEvent
from tests.api.conftest import PASSWORD, assert_problem, bearer, insert_tenant, insert_user, login

ITEM_KEYS = {"id", "type", "version", "occurred_at", "actor", "aggregate", "tenant_id", "payload"}


async def _all_pages(client, path: str, headers: dict, **params) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        response = await client.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= params.get("limit", 50)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_my_events_newest_first_in_pages_filtered_by_type_and_time(client, user):
    tokens = [await login(client, user) for _ in range(3)]
    headers = bearer(tokens[-1]["access_token"])
    assert (await client.patch("/v1/me", json={"display_name": "Ada"}, headers=headers)).status_code == 200
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens[0]["access_token"]))).status_code == 204

    items = await _all_pages(client, "/v1/me/events", headers, limit=2)
    assert [i["type"] for i in items] == ["user.logged_out", "user.profile_updated"] + ["user.logged_in"] * 3
    assert len({i["id"] for i in items}) == 5
    assert all(set(i) == ITEM_KEYS for i in items)
    assert [i["occurred_at"] for i in items] == sorted((i["occurred_at"] for i in items), reverse=True)
    assert all(i["actor"] == str(user.id) and i["tenant_id"] is None for i in items)
    assert items[1]["aggregate"] == {"type": "user", "id": str(user.id)} and items[1]["version"] == 1

    logins = await _all_pages(client, "/v1/me/events", headers, type="user.logged_in")
    assert [i["id"] for i in logins] == [i["id"] for i in items[2:]]
    assert len(await _all_pages(client, "/v1/me/events", headers, type="user.")) == 5
    assert await _all_pages(client, "/v1/me/events", headers, type="tenant.") == []
    assert await _all_pages(client, "/v1/me/events", headers, type="user.logged") == []  # a prefix ends in "."

    pivot = items[1]["occurred_at"]  # the profile update
    since = await _all_pages(client, "/v1/me/events", headers, since=pivot)
    assert [i["type"] for i in since] == ["user.logged_out", "user.profile_updated"]
    until = await _all_pages(client, "/v1/me/events", headers, until=pivot)
    assert [i["type"] for i in until] == ["user.logged_in"] * 3

    assert_problem(
        await client.get("/v1/me/events", headers=headers, params={"cursor": "bm9wZQ"}), 400, "invalid-cursor"
    )
    assert_problem(
        await client.get("/v1/me/events", headers=headers, params={"since": pivot, "until": pivot}),
        400,
        "invalid-time-window",
    )
    assert_problem(await client.get("/v1/me/events", headers=headers, params={"limit": 201}), 422, "validation-failed")
    assert_problem(
        await client.get("/v1/me/events", headers=headers, params={"type": "user.%"}), 422, "validation-failed"
    )
    assert_problem(await client.get("/v1/me/events"), 401, "unauthenticated")


async def test_profile_update_is_an_event_with_old_and_new_values(client, user, engine):
    headers = bearer((await login(client, user))["access_token"])
    response = await client.patch("/v1/me", json={"display_name": "  Ada Lovelace "}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "Ada Lovelace"
    assert (await client.get("/v1/me", headers=headers)).json()["display_name"] == "Ada Lovelace"
    # the same value again, or nothing: no change, no event
    assert (await client.patch("/v1/me", json={"display_name": "Ada Lovelace"}, headers=headers)).status_code == 200
    assert (await client.patch("/v1/me", json={}, headers=headers)).json()["display_name"] == "Ada Lovelace"

    for bad in ({"display_name": ""}, {"display_name": "a\nb"}, {"display_name": "x" * 201}, {"email": "x@y.z"}):
        assert_problem(await client.patch("/v1/me", json=bad, headers=headers), 422, "validation-failed")

    events = await _all_pages(client, "/v1/me/events", headers, type="user.profile_updated")
    assert len(events) == 1
    assert events[0]["payload"] == {"changes": {"display_name": {"old": "Test User", "new": "Ada Lovelace"}}}
    assert events[0]["actor"] == str(user.id)


async def test_a_user_never_sees_another_users_events(client, engine):
    ada, bob = await insert_user(engine), await insert_user(engine)
    ada_headers = bearer((await login(client, ada))["access_token"])
    bob_headers = bearer((await login(client, bob))["access_token"])
    ada_events = await _all_pages(client, "/v1/me/events", ada_headers)
    bob_events = await _all_pages(client, "/v1/me/events", bob_headers)
    assert len(ada_events) == len(bob_events) == 1
    assert ada_events[0]["id"] != bob_events[0]["id"]

    # Row-level security, not the query's WHERE: Bob's transaction does not see Ada's rows at all.
    async with transaction(engine, user_id=bob.id) as db:
        seen = (await db.exec(select(DomainEvent).where(DomainEvent.user_id == ada.id))).all()
    assert seen == []
    async with transaction(engine) as db:  # no user, no tenant: nobody's account events
        assert (await db.exec(select(DomainEvent).where(DomainEvent.user_id.in_([ada.id, bob.id])))).all() == []
    async with transaction(engine, user_id=ada.id) as db:
        assert len((await db.exec(select(DomainEvent).where(DomainEvent.user_id == ada.id))).all()) == 1


async def test_tenant_events_for_owners_and_admins_of_that_tenant_only(client, engine):
    owner, admin, member, outsider = [await insert_user(engine) for _ in range(4)]
    tenant_a = await insert_tenant(engine, owner.id, members={admin.id: "admin", member.id: "member"})
    tenant_b = await insert_tenant(engine, outsider.id)
    for tid, n in ((tenant_a, 3), (tenant_b, 1)):
        for i in range(n):
            async with transaction(engine, tenant_id=tid) as db:
                record_event(db, "tenant.audited", "tenant", tid, {"n": i}, tenant_id=tid, actor_id=owner.id)
    headers = {who.id: bearer((await login(client, who))["access_token"]) for who in (owner, admin, member, outsider)}

    for who in (owner, admin):
        items = await _all_pages(client, f"/v1/tenants/{tenant_a}/events", headers[who.id], limit=2, type="tenant.")
        assert [i["payload"] for i in items] == [{"n": 2}, {"n": 1}, {"n": 0}]
        assert {i["tenant_id"] for i in items} == {str(tenant_a)}
    # a plain member: refused; outside the tenant, or no such tenant: the same 404
    assert_problem(await client.get(f"/v1/tenants/{tenant_a}/events", headers=headers[member.id]), 403, "forbidden")
    missing = assert_problem(
        await client.get(f"/v1/tenants/{tenant_a}/events", headers=headers[outsider.id]), 404, "not-found"
    )
    unknown = assert_problem(
        await client.get(f"/v1/tenants/{uuid.uuid4()}/events", headers=headers[owner.id]), 404, "not-found"
    )
    assert missing["detail"] == unknown["detail"]
    assert_problem(await client.get(f"/v1/tenants/{tenant_b}/events", headers=headers[owner.id]), 404, "not-found")

    # Row-level security: inside tenant A, B's events do not exist even without a WHERE on the tenant.
    async with transaction(engine, tenant_id=tenant_a, user_id=owner.id) as db:
        tenants = {
            e.tenant_id for e in (await db.exec(select(DomainEvent).where(DomainEvent.type == "tenant.audited"))).all()
        }
    assert tenants == {tenant_a}


SECRET_KEY = re.compile(r"password|hash|secret|token(?!_id)|card|cvc|iban", re.IGNORECASE)


def _keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value] + [k2 for v in value.values() for k2 in _keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


async def test_no_event_payload_carries_a_secret(client, engine):
    """After logins, failed logins, a refresh-token reuse, a password change and a logout: no payload key names
    a secret and no value holds the password, a hash or a refresh token (every event in the database is scanned,
    including those the other tests left)."""
    account = await insert_user(engine)
    first = await login(client, account)
    assert (
        await client.post("/v1/auth/login", json={"email": account.email, "password": "wrong " + PASSWORD})
    ).status_code == 401
    rotated = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    second = await login(client, account)
    new_password = "another long passphrase"
    changed = await client.post(
        "/v1/me/password",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=bearer(second["access_token"]),
    )
    assert changed.status_code == 204, changed.text
    assert (await client.post("/v1/auth/logout", headers=bearer(second["access_token"]))).status_code == 204

    async with transaction(engine, platform=True) as db:
        events = (await db.exec(select(DomainEvent))).all()
    mine = [e.type for e in events if e.user_id == account.id]
    assert {
        "user.logged_in",
        "user.login_failed",
        "user.session_family_revoked",
        "user.password_changed",
        "user.logged_out",
    } <= set(mine)
    for event in events:
        if event.user_id == account.id:  # the account's own events follow the catalogue's schemas
            parse_payload(event.type, event.version, event.payload)
        assert not [k for k in _keys(event.payload) if SECRET_KEY.search(k)], (event.type, event.payload)
        text = str(event.payload)
        assert "$argon2" not in text and PASSWORD not in text and new_password not in text, event.type
        assert first["refresh_token"] not in text and first["refresh_token"].split(".")[1] not in text, event.type

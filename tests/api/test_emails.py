"""Tenant-facing email tracking over HTTP: list (filters, cursor pages), stats, and isolation between tenants.

Tracking rows are inserted directly, through the application role inside each tenant's transaction, as the
delivery workflow's activities write them; the API reads them back through row-level security.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tests.api.conftest import assert_problem, bearer, insert_email, insert_tenant, insert_user, login, person

ITEM_KEYS = {
    "id",
    "template",
    "to_address",
    "subject",
    "state",
    "attempts",
    "last_reply",
    "created_at",
    "updated_at",
    "sent_at",
}
ALL_STATES = {"queued", "sending", "deferred", "sent", "failed", "dead_lettered", "discarded", "suppressed"}


async def _all_pages(client, url: str, headers: dict, **params) -> tuple[list[dict], int]:
    items, pages, cursor = [], 0, None
    while True:
        response = await client.get(url, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


async def test_list_is_newest_first_filtered_and_paged(client, engine):
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    old = await insert_email(
        engine, tid, template="welcome", state="sent", created_at=t0 - timedelta(days=3), sent_at=t0 - timedelta(days=3)
    )
    mid = await insert_email(
        engine,
        tid,
        template="invitation",
        state="deferred",
        attempts=3,
        last_reply="421 4.7.0 Try again later",
        created_at=t0,
    )
    # three rows created in the same microsecond: the id breaks the tie, and no page repeats or skips one
    tied = [
        await insert_email(
            engine,
            tid,
            template="notice",
            state="dead_lettered",
            created_at=t0 + timedelta(minutes=5),
            last_reply="550 5.1.1 No such user",
        )
        for _ in range(3)
    ]
    new = await insert_email(
        engine, tid, template="invitation", state="queued", attempts=0, created_at=t0 + timedelta(minutes=10)
    )
    url = f"/v1/tenants/{tid}/emails"

    first = await client.get(url, headers=owner.headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["next_cursor"] is None
    expected = [new.id, *sorted((t.id for t in tied), reverse=True), mid.id, old.id]
    assert [i["id"] for i in body["items"]] == [str(i) for i in expected]
    assert all(set(i) == ITEM_KEYS for i in body["items"])  # neither tenant_id nor workflow_id leak out
    deferred = body["items"][4]
    assert (deferred["state"], deferred["attempts"], deferred["last_reply"], deferred["template"]) == (
        "deferred",
        3,
        "421 4.7.0 Try again later",
        "invitation",
    )
    assert deferred["to_address"] == mid.to_address and deferred["subject"] == "Hi"
    assert body["items"][-1]["sent_at"] is not None

    paged, pages = await _all_pages(client, url, owner.headers, limit=2)
    assert [i["id"] for i in paged] == [str(i) for i in expected] and pages == 3
    paged, pages = await _all_pages(client, url, owner.headers, limit=1)
    assert [i["id"] for i in paged] == [str(i) for i in expected] and pages == 6

    async def ids(**params) -> list[str]:
        response = await client.get(url, headers=owner.headers, params=params)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert await ids(state="dead_lettered") == [str(i) for i in expected[1:4]]
    assert await ids(template="invitation") == [str(new.id), str(mid.id)]
    assert await ids(template="invitation", state="queued") == [str(new.id)]
    assert await ids(since=t0.isoformat()) == [str(i) for i in expected[:5]]
    assert await ids(until=t0.isoformat()) == [str(old.id)]  # until is exclusive
    naive = (t0 + timedelta(minutes=5)).replace(tzinfo=None).isoformat()  # no offset: UTC
    assert await ids(since=naive, until=(t0 + timedelta(minutes=6)).isoformat()) == [str(i) for i in expected[1:4]]
    assert await ids(template="verify_email") == []
    # filters and cursor together: page 2 of the dead letters
    page1 = (await client.get(url, headers=owner.headers, params={"state": "dead_lettered", "limit": 2})).json()
    page2 = (
        await client.get(
            url, headers=owner.headers, params={"state": "dead_lettered", "limit": 2, "cursor": page1["next_cursor"]}
        )
    ).json()
    assert [i["id"] for i in page1["items"] + page2["items"]] == [str(i) for i in expected[1:4]]
    assert page2["next_cursor"] is None


async def test_default_and_maximum_page_size(client, engine):
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    base = datetime.now(UTC) - timedelta(minutes=30)
    for n in range(205):
        await insert_email(engine, tid, created_at=base + timedelta(seconds=n))
    url = f"/v1/tenants/{tid}/emails"
    default = (await client.get(url, headers=owner.headers)).json()
    assert len(default["items"]) == 50 and default["next_cursor"]
    biggest = (await client.get(url, headers=owner.headers, params={"limit": 200})).json()
    assert len(biggest["items"]) == 200 and biggest["next_cursor"]
    rest = (
        await client.get(url, headers=owner.headers, params={"limit": 200, "cursor": biggest["next_cursor"]})
    ).json()
    assert len(rest["items"]) == 5 and rest["next_cursor"] is None
    assert_problem(await client.get(url, headers=owner.headers, params={"limit": 201}), 422, "validation-failed")
    assert_problem(await client.get(url, headers=owner.headers, params={"limit": 0}), 422, "validation-failed")


async def test_stats_count_by_state_template_and_both_in_the_window(client, engine):
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    now = datetime.now(UTC)
    for template, state, age in [
        ("welcome", "sent", timedelta(hours=1)),
        ("welcome", "sent", timedelta(hours=2)),
        ("invitation", "sent", timedelta(hours=3)),
        ("invitation", "dead_lettered", timedelta(hours=4)),
        ("invitation", "deferred", timedelta(minutes=5)),
        ("notice", "discarded", timedelta(hours=30)),  # outside the default 24 h
    ]:
        await insert_email(engine, tid, template=template, state=state, created_at=now - age)
    url = f"/v1/tenants/{tid}/emails/stats"

    response = await client.get(url, headers=owner.headers)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["total"] == 5
    assert set(stats["by_state"]) == ALL_STATES
    assert stats["by_state"] == {**dict.fromkeys(ALL_STATES, 0), "sent": 3, "dead_lettered": 1, "deferred": 1}
    assert stats["by_template"] == {"welcome": 2, "invitation": 3}
    assert stats["by_template_state"] == {
        "welcome": {"sent": 2},
        "invitation": {"sent": 1, "dead_lettered": 1, "deferred": 1},
    }
    window = datetime.fromisoformat(stats["until"]) - datetime.fromisoformat(stats["since"])
    assert window == timedelta(hours=24)

    wide = (
        await client.get(url, headers=owner.headers, params={"since": (now - timedelta(days=2)).isoformat()})
    ).json()
    assert wide["total"] == 6 and wide["by_state"]["discarded"] == 1 and wide["by_template"]["notice"] == 1
    narrow = (
        await client.get(
            url,
            headers=owner.headers,
            params={
                "since": (now - timedelta(hours=3, minutes=30)).isoformat(),
                "until": (now - timedelta(minutes=30)).isoformat(),
            },
        )
    ).json()
    assert narrow["total"] == 3 and narrow["by_template_state"] == {"welcome": {"sent": 2}, "invitation": {"sent": 1}}
    empty = (
        await client.get(
            url,
            headers=owner.headers,
            params={"since": (now - timedelta(days=10)).isoformat(), "until": (now - timedelta(days=9)).isoformat()},
        )
    ).json()
    assert empty["total"] == 0 and empty["by_template"] == {} and set(empty["by_state"].values()) == {0}


async def test_tenant_admins_see_only_their_own_tenants_mail(client, engine):
    owner_a, admin_a, member_a = [await person(client, engine) for _ in range(3)]
    owner_b = await person(client, engine)
    tenant_a = await insert_tenant(engine, owner_a.id, members={admin_a.id: "admin", member_a.id: "member"})
    tenant_b = await insert_tenant(engine, owner_b.id, name="Beta Secret Corp")
    mine = await insert_email(engine, tenant_a, template="welcome", to_address="alpha@example.com")
    secret = await insert_email(
        engine,
        tenant_b,
        template="invitation",
        to_address="beta-secret@example.com",
        subject="Beta Secret Corp",
        state="dead_lettered",
    )
    platform = await insert_email(engine, None, template="verify_email", to_address="platform@example.com")

    for who in (owner_a, admin_a):
        listed = await client.get(f"/v1/tenants/{tenant_a}/emails", headers=who.headers)
        assert listed.status_code == 200, listed.text
        assert [i["id"] for i in listed.json()["items"]] == [str(mine.id)]
        stats = (await client.get(f"/v1/tenants/{tenant_a}/emails/stats", headers=who.headers)).json()
        assert stats["total"] == 1 and stats["by_template"] == {"welcome": 1}
        # B's tenant id: answered exactly like a tenant that does not exist, nothing of B in the body
        for path in (
            f"/v1/tenants/{tenant_b}/emails",
            f"/v1/tenants/{tenant_b}/emails/stats",
            f"/v1/tenants/{uuid.uuid4()}/emails",
        ):
            problem = assert_problem(await client.get(path, headers=who.headers), 404, "not-found")
            assert "beta" not in str(problem).lower() and str(secret.id) not in str(problem)
        # filters and cursors cannot reach across: a cursor is only a position, B's rows stay invisible
        for params in ({"state": "dead_lettered"}, {"template": "invitation"}, {"template": "verify_email"}):
            response = await client.get(f"/v1/tenants/{tenant_a}/emails", headers=who.headers, params=params)
            assert response.json()["items"] == [], params
    assert str(platform.id) not in (await client.get(f"/v1/tenants/{tenant_a}/emails", headers=owner_a.headers)).text

    # A plain member knows the tenant exists but may not read its mail; outsiders and anonymous callers may not either
    for path in (f"/v1/tenants/{tenant_a}/emails", f"/v1/tenants/{tenant_a}/emails/stats"):
        assert_problem(await client.get(path, headers=member_a.headers), 403, "forbidden")
        assert_problem(await client.get(path, headers=owner_b.headers), 404, "not-found")
        assert_problem(await client.get(path), 401, "unauthenticated")
    # B's owner sees B's message
    b_items = (await client.get(f"/v1/tenants/{tenant_b}/emails", headers=owner_b.headers)).json()["items"]
    assert [i["id"] for i in b_items] == [str(secret.id)]


async def test_bad_cursor_window_and_filters(client, engine):
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    url = f"/v1/tenants/{tid}/emails"
    for cursor in ("not-a-cursor", "W10", "WyJ4IiwieSJd", "!!!"):
        assert_problem(await client.get(url, headers=owner.headers, params={"cursor": cursor}), 400, "invalid-cursor")
    now = datetime.now(UTC)
    for path in (url, f"{url}/stats"):
        problem = assert_problem(
            await client.get(
                path,
                headers=owner.headers,
                params={"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()},
            ),
            400,
            "invalid-time-window",
        )
        assert "since" in problem["detail"]
        assert_problem(
            await client.get(path, headers=owner.headers, params={"since": "yesterday"}), 422, "validation-failed"
        )
    assert_problem(await client.get(url, headers=owner.headers, params={"state": "lost"}), 422, "validation-failed")
    assert_problem(
        await client.get(url, headers=owner.headers, params={"template": "Robert'); DROP"}), 422, "validation-failed"
    )
    # someone with no tenant at all, and a tampered token
    stranger = await insert_user(engine)
    token = (await login(client, stranger))["access_token"]
    assert_problem(await client.get(url, headers=bearer(token)), 404, "not-found")
    assert_problem(await client.get(url, headers=bearer(token + "x")), 401, "invalid-access-token")

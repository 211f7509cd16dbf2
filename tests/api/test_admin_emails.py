"""Platform operators over HTTP: all tenants' emails, dead letters (retry / discard), the suppression list.

Non-operators get the 404 an unknown path gets on every admin route. Read paths use tracking rows inserted
directly; the end-to-end tests run the real EmailDelivery workflow against the stack's SMTP sink, whose
`+fail550` recipients are always refused with 550.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from models.contracts import EmailRequest, EmailResult
from models.db import transaction
from models.names import EMAIL_DELIVERY_WORKFLOW, EMAIL_TASK_QUEUE, email_workflow_id
from models.tables import DomainEvent, EmailSuppression
from prognet_dev import read_messages
from tests.api.conftest import (
    assert_problem,
    insert_email,
    insert_tenant,
    make_platform_admin,
    person,
)

UNKNOWN_PATH_DETAIL = "No resource at this path."


async def _operator(client, engine):
    who = await person(client, engine)
    await make_platform_admin(engine, who.id)
    return who


def _admin_routes(message_id: uuid.UUID, suppression_id: uuid.UUID) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/v1/admin/emails", None),
        ("GET", "/v1/admin/emails?state=dead_lettered", None),
        ("GET", f"/v1/admin/emails/{message_id}", None),
        ("POST", f"/v1/admin/emails/{message_id}/retry", {"to_address": "fixed@example.com"}),
        ("POST", f"/v1/admin/emails/{message_id}/discard", {"reason": "no"}),
        ("GET", "/v1/admin/email-suppressions", None),
        ("DELETE", f"/v1/admin/email-suppressions/{suppression_id}", None),
    ]


async def _suppress(
    engine,
    tenant_id: uuid.UUID | None,
    address: str,
    message_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> EmailSuppression:
    row = EmailSuppression(
        tenant_id=tenant_id,
        address=address,
        reason="550 5.1.1 No such user",
        message_id=message_id,
        **({"created_at": created_at} if created_at else {}),
    )
    async with transaction(engine, tenant_id=tenant_id, platform=tenant_id is None) as db:
        db.add(row)
    return row


async def _suppression_exists(engine, suppression_id: uuid.UUID) -> bool:
    async with transaction(engine, platform=True) as db:
        return await db.get(EmailSuppression, suppression_id) is not None


# --- who may call ------------------------------------------------------------------------------------------------


async def test_non_operators_get_404_on_every_admin_route(client, engine):
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    dead = await insert_email(engine, tid, state="dead_lettered", last_reply="550 5.1.1 No such user")
    suppression = await _suppress(engine, tid, f"gone-{uuid.uuid4().hex[:8]}@example.com", dead.id)
    unknown = assert_problem(await client.get("/v1/no-such-route", headers=owner.headers), 404, "not-found")

    for method, url, body in _admin_routes(dead.id, suppression.id):
        # a tenant owner (even of the tenant the rows belong to): exactly what an unknown path answers
        problem = assert_problem(await client.request(method, url, json=body, headers=owner.headers), 404, "not-found")
        assert problem["detail"] == unknown["detail"] == UNKNOWN_PATH_DETAIL, (method, url)
        assert dead.to_address not in str(problem) and str(tid) not in str(problem)
        # no token at all: 401 as everywhere
        assert_problem(await client.request(method, url, json=body), 401, "unauthenticated")
    assert await _suppression_exists(engine, suppression.id)  # the DELETE attempts changed nothing

    # granted: in; revoked: out again at once (the flag is read on every request, not baked into the token)
    await make_platform_admin(engine, owner.id)
    assert (await client.get("/v1/admin/emails", headers=owner.headers)).status_code == 200
    await make_platform_admin(engine, owner.id, granted=False)
    assert_problem(await client.get("/v1/admin/emails", headers=owner.headers), 404, "not-found")


# --- reading: every tenant and platform mail ---------------------------------------------------------------------


async def test_operator_sees_all_tenants_and_platform_mail(client, engine):
    operator = await _operator(client, engine)
    owner_a, owner_b = await person(client, engine), await person(client, engine)
    tenant_a, tenant_b = await insert_tenant(engine, owner_a.id), await insert_tenant(engine, owner_b.id)
    base = datetime.now(UTC) - timedelta(minutes=20)
    a_sent = await insert_email(engine, tenant_a, template="welcome", created_at=base)
    a_dead = await insert_email(
        engine,
        tenant_a,
        template="invitation",
        state="dead_lettered",
        last_reply="550 5.1.1 No such user",
        created_at=base + timedelta(seconds=1),
    )
    b_dead = await insert_email(
        engine, tenant_b, template="notice", state="dead_lettered", created_at=base + timedelta(seconds=2)
    )
    # platform mail at an instant of its own, so the test can find it among every other test's rows
    moment = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(microseconds=uuid.uuid4().int % 10**12)
    platform = await insert_email(engine, None, template="verify_email", state="dead_lettered", created_at=moment)

    async def ids(**params) -> list[str]:
        response = await client.get("/v1/admin/emails", headers=operator.headers, params=params)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert await ids(tenant_id=str(tenant_a)) == [str(a_dead.id), str(a_sent.id)]
    assert await ids(tenant_id=str(tenant_b)) == [str(b_dead.id)]
    assert await ids(tenant_id=str(tenant_a), state="dead_lettered") == [str(a_dead.id)]
    assert await ids(tenant_id=str(tenant_a), template="welcome") == [str(a_sent.id)]
    window = {"since": moment.isoformat(), "until": (moment + timedelta(microseconds=1)).isoformat()}
    assert await ids(**window) == [str(platform.id)]
    assert await ids(state="dead_lettered", **window) == [str(platform.id)]
    assert await ids(state="sent", **window) == []

    # the dead-letter queue across tenants, page by page: every dead letter of this test is in it, nothing else
    seen, cursor = [], None
    since = (base - timedelta(seconds=1)).isoformat()
    while True:
        page = (
            await client.get(
                "/v1/admin/emails",
                headers=operator.headers,
                params={"state": "dead_lettered", "since": since, "limit": 1, **({"cursor": cursor} if cursor else {})},
            )
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert {i["state"] for i in seen} == {"dead_lettered"}
    assert {str(a_dead.id), str(b_dead.id)} <= {i["id"] for i in seen}
    assert len({i["id"] for i in seen}) == len(seen)
    by_id = {i["id"]: i for i in seen}
    assert by_id[str(a_dead.id)]["tenant_id"] == str(tenant_a)
    assert by_id[str(a_dead.id)]["workflow_id"] == email_workflow_id(a_dead.id)

    detail = await client.get(f"/v1/admin/emails/{platform.id}", headers=operator.headers)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["tenant_id"] is None and body["template"] == "verify_email" and body["state"] == "dead_lettered"
    assert body["to_address"] == platform.to_address and body["workflow_id"] == email_workflow_id(platform.id)
    assert body["links"] == {
        "self": f"/v1/admin/emails/{platform.id}",
        "retry": f"/v1/admin/emails/{platform.id}/retry",
        "discard": f"/v1/admin/emails/{platform.id}/discard",
    }
    assert body["saga"] is None  # no workflow behind this row (and no Temporal in this app)
    assert_problem(await client.get(f"/v1/admin/emails/{uuid.uuid4()}", headers=operator.headers), 404, "not-found")
    assert_problem(
        await client.get("/v1/admin/emails", headers=operator.headers, params={"cursor": "nope"}), 400, "invalid-cursor"
    )


# --- retry / discard guards -------------------------------------------------------------------------------------


async def test_retry_and_discard_need_a_dead_letter(client, engine):
    operator = await _operator(client, engine)
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    for state in ("queued", "sending", "deferred", "sent", "discarded", "suppressed", "failed"):
        row = await insert_email(engine, tid, state=state)
        for action, body in (
            ("retry", {"to_address": "fixed@example.com"}),
            ("retry", None),
            ("discard", {"reason": "x"}),
            ("discard", None),
        ):
            problem = assert_problem(
                await client.post(f"/v1/admin/emails/{row.id}/{action}", json=body, headers=operator.headers),
                409,
                "email-not-dead-lettered",
            )
            assert problem["state"] == state and state in problem["detail"]
    missing = uuid.uuid4()
    assert_problem(await client.post(f"/v1/admin/emails/{missing}/retry", headers=operator.headers), 404, "not-found")
    assert_problem(await client.post(f"/v1/admin/emails/{missing}/discard", headers=operator.headers), 404, "not-found")
    dead = await insert_email(engine, tid, state="dead_lettered")
    for body in ({"to_address": "not an address"}, {"to_address": "ok@example.com", "extra": 1}, {"reason": ""}):
        assert_problem(
            await client.post(f"/v1/admin/emails/{dead.id}/retry", json=body, headers=operator.headers),
            422,
            "validation-failed",
        )
    assert_problem(
        await client.post(f"/v1/admin/emails/{dead.id}/discard", json={"reason": "x" * 501}, headers=operator.headers),
        422,
        "validation-failed",
    )
    # a dead letter with Temporal unreachable: 503, never a silent success
    response = await client.post(f"/v1/admin/emails/{dead.id}/discard", json={}, headers=operator.headers)
    assert_problem(response, 503, "workflow-engine-unavailable")


async def test_a_dead_letter_whose_workflow_has_ended_is_refused(api, app_engine):
    operator = await _operator(api, app_engine)
    owner = await person(api, app_engine)
    tid = await insert_tenant(app_engine, owner.id)
    orphan = await insert_email(app_engine, tid, state="dead_lettered")  # no email-{id} workflow exists
    problem = assert_problem(
        await api.post(f"/v1/admin/emails/{orphan.id}/discard", headers=operator.headers),
        409,
        "email-not-dead-lettered",
    )
    assert "no longer waiting" in problem["detail"]


async def test_retry_to_a_suppressed_address_is_refused_until_lifted(client, engine):
    operator = await _operator(client, engine)
    owner = await person(client, engine)
    tid, other = await insert_tenant(engine, owner.id), await insert_tenant(engine, owner.id)
    address = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    dead = await insert_email(engine, tid, state="dead_lettered", to_address=address)
    suppression = await _suppress(engine, tid, address, dead.id)
    elsewhere = await _suppress(engine, other, address)  # the same address, suppressed in another tenant too

    for body in (None, {"to_address": address.upper()}):
        problem = assert_problem(
            await client.post(f"/v1/admin/emails/{dead.id}/retry", json=body, headers=operator.headers),
            409,
            "email-address-suppressed",
        )
        assert problem["suppression_id"] == str(suppression.id)

    listed = (
        await client.get("/v1/admin/email-suppressions", headers=operator.headers, params={"tenant_id": str(tid)})
    ).json()
    assert [(s["id"], s["address"], s["message_id"], s["tenant_id"]) for s in listed["items"]] == [
        (str(suppression.id), address, str(dead.id), str(tid))
    ]
    by_address = (
        await client.get("/v1/admin/email-suppressions", headers=operator.headers, params={"address": address.upper()})
    ).json()
    assert {s["id"] for s in by_address["items"]} == {str(suppression.id), str(elsewhere.id)}
    assert by_address["next_cursor"] is None

    deleted = await client.delete(f"/v1/admin/email-suppressions/{suppression.id}", headers=operator.headers)
    assert deleted.status_code == 204 and deleted.content == b""
    assert not await _suppression_exists(engine, suppression.id)
    assert await _suppression_exists(engine, elsewhere.id)  # only the one lifted
    assert_problem(
        await client.delete(f"/v1/admin/email-suppressions/{suppression.id}", headers=operator.headers),
        404,
        "not-found",
    )
    async with transaction(engine, tenant_id=tid) as db:
        events = (
            await db.exec(
                select(DomainEvent).where(
                    DomainEvent.type == "email.suppression_lifted", DomainEvent.aggregate_id == str(suppression.id)
                )
            )
        ).all()
    assert len(events) == 1 and events[0].tenant_id == tid
    assert events[0].payload == {"by": str(operator.id), "message_id": str(dead.id)}
    assert address not in str(events[0].payload)  # no address in the audit trail
    # lifted: the suppression guard lets the retry through (it now needs the workflow: 503 without Temporal)
    assert_problem(
        await client.post(f"/v1/admin/emails/{dead.id}/retry", headers=operator.headers),
        503,
        "workflow-engine-unavailable",
    )


async def test_suppression_pages(client, engine):
    operator = await _operator(client, engine)
    owner = await person(client, engine)
    tid = await insert_tenant(engine, owner.id)
    base = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        await _suppress(engine, tid, f"s{n}-{uuid.uuid4().hex[:6]}@example.com", created_at=base + timedelta(seconds=n))
        for n in range(5)
    ]
    seen, cursor, pages = [], None, 0
    while True:
        page = (
            await client.get(
                "/v1/admin/email-suppressions",
                headers=operator.headers,
                params={"tenant_id": str(tid), "limit": 2, **({"cursor": cursor} if cursor else {})},
            )
        ).json()
        seen += [s["id"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(r.id) for r in reversed(rows)] and pages == 3


# --- end to end: the real EmailDelivery workflow and the SMTP sink ------------------------------------------------


async def _start(temporal_client, tenant_id: uuid.UUID, to_address: str) -> uuid.UUID:
    message_id = uuid.uuid4()
    await temporal_client.start_workflow(
        EMAIL_DELIVERY_WORKFLOW,
        EmailRequest(
            message_id=message_id,
            template="notice",
            tenant_id=tenant_id,
            to_address=to_address,
            params={"subject": "Hi", "body": "Hello"},
        ),
        id=email_workflow_id(message_id),
        task_queue=EMAIL_TASK_QUEUE,
    )
    return message_id


async def _wait_state(api, operator, message_id: uuid.UUID, state: str, timeout: float = 30.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(f"/v1/admin/emails/{message_id}", headers=operator.headers)
        if response.status_code == 200 and response.json()["state"] == state:
            return response.json()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"email {message_id} never {state}: {response.status_code} {response.text}")
        await asyncio.sleep(0.1)


async def _delivered_to(maildir, address: str, timeout: float = 20.0) -> list:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [m for m in read_messages(maildir) if address.lower() in str(m.get("To", "")).lower()]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_dead_letter_retried_to_a_corrected_address_is_sent(api, app_engine, temporal_client, services):
    operator = await _operator(api, app_engine)
    owner = await person(api, app_engine)
    tid = await insert_tenant(app_engine, owner.id)
    tag = uuid.uuid4().hex[:10]
    bad = f"bob+fail550-{tag}@example.com"
    message_id = await _start(temporal_client, tid, bad)

    dead = await _wait_state(api, operator, message_id, "dead_lettered")
    assert dead["tenant_id"] == str(tid) and dead["to_address"] == bad and dead["template"] == "notice"
    assert dead["last_reply"] and "550" in dead["last_reply"]
    # what the parked workflow says it waits for, as the Temporal UI shows it
    assert dead["saga"]["status"] == "awaiting_operator" and dead["saga"]["step"] == "dead_letter", dead["saga"]
    assert (
        await temporal_client.get_workflow_handle(email_workflow_id(message_id)).describe()
    ).status.name == "RUNNING"
    listed = (
        await api.get(
            "/v1/admin/emails", headers=operator.headers, params={"state": "dead_lettered", "tenant_id": str(tid)}
        )
    ).json()
    assert [i["id"] for i in listed["items"]] == [str(message_id)]
    # the 550 suppressed the address for this tenant: retrying to it as is would only fail again
    suppressions = (
        await api.get("/v1/admin/email-suppressions", headers=operator.headers, params={"tenant_id": str(tid)})
    ).json()["items"]
    assert [(s["address"].lower(), s["message_id"]) for s in suppressions] == [(bad.lower(), str(message_id))]
    assert_problem(
        await api.post(f"/v1/admin/emails/{message_id}/retry", headers=operator.headers),
        409,
        "email-address-suppressed",
    )

    good = f"bob-{tag}@example.com"
    accepted = await api.post(
        f"/v1/admin/emails/{message_id}/retry",
        json={"to_address": good, "reason": "typo in the address"},
        headers=operator.headers,
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {
        "message_id": str(message_id),
        "workflow_id": email_workflow_id(message_id),
        "action": "retry",
        "links": {"self": f"/v1/admin/emails/{message_id}"},
    }
    sent = await _wait_state(api, operator, message_id, "sent")
    assert sent["to_address"] == good and sent["sent_at"] and sent["saga"] is None
    delivered = await _delivered_to(services.maildir, good)
    assert len(delivered) == 1 and delivered[0]["Subject"] == "Hi"
    assert not await _delivered_to(services.maildir, bad, timeout=0)
    result = await temporal_client.get_workflow_handle(email_workflow_id(message_id), result_type=EmailResult).result()
    assert result.state == "sent"
    # the tenant's own admins see the outcome in their tracking; a second retry is refused
    mine = (await api.get(f"/v1/tenants/{tid}/emails", headers=owner.headers)).json()["items"]
    assert [(i["id"], i["state"], i["to_address"]) for i in mine] == [(str(message_id), "sent", good)]
    assert_problem(
        await api.post(f"/v1/admin/emails/{message_id}/retry", json={"to_address": good}, headers=operator.headers),
        409,
        "email-not-dead-lettered",
    )
    async with transaction(app_engine, tenant_id=tid) as db:
        audit = (
            await db.exec(
                select(DomainEvent).where(
                    DomainEvent.type == "email.retry_requested", DomainEvent.aggregate_id == str(message_id)
                )
            )
        ).all()
    assert [e.payload for e in audit] == [
        {"by": str(operator.id), "address_corrected": True, "reason": "typo in the address"}
    ]


async def test_dead_letter_discarded(api, app_engine, temporal_client, services):
    operator = await _operator(api, app_engine)
    owner = await person(api, app_engine)
    tid = await insert_tenant(app_engine, owner.id)
    bad = f"carol+fail550-{uuid.uuid4().hex[:10]}@example.com"
    message_id = await _start(temporal_client, tid, bad)
    await _wait_state(api, operator, message_id, "dead_lettered")

    accepted = await api.post(
        f"/v1/admin/emails/{message_id}/discard", json={"reason": "mailbox closed"}, headers=operator.headers
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["action"] == "discard"
    discarded = await _wait_state(api, operator, message_id, "discarded")
    assert discarded["sent_at"] is None
    result = await temporal_client.get_workflow_handle(email_workflow_id(message_id), result_type=EmailResult).result()
    assert result.state == "discarded"
    assert not await _delivered_to(services.maildir, bad, timeout=0)
    for action in ("retry", "discard"):
        assert_problem(
            await api.post(f"/v1/admin/emails/{message_id}/{action}", headers=operator.headers),
            409,
            "email-not-dead-lettered",
        )
    stats = (await api.get(f"/v1/tenants/{tid}/emails/stats", headers=owner.headers)).json()
    assert (
        stats["total"] == 1
        and stats["by_state"]["discarded"] == 1
        and stats["by_template_state"] == {"notice": {"discarded": 1}}
    )

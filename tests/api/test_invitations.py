"""Invitations over HTTP on the real stack: invite → email → accept; wrong email; revoke; re-invite; rights.

Expiry (the 7-day durable timer) is tested under time-skipping in tests/unit.
"""

from __future__ import annotations

import uuid

from models.names import SA_TENANT_ID, SA_USER_ID, invitation_workflow_id
from prognet_dev import read_messages
from tests.api.conftest import (
    active_tenant,
    add_member,
    assert_problem,
    emailed_invitation_token,
    invite,
    person,
    wait_for_invitation,
)


def _address(tag: str = "grace") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


async def test_invite_email_accept_makes_a_member(api, app_engine, services, temporal_client):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner, name="Acme Labs")
    address = _address()
    accepted = await invite(api, owner, tid, address.upper().replace("@EXAMPLE.COM", "@example.com"), role="admin")
    iid, wid = accepted["invitation_id"], accepted["workflow_id"]
    assert wid == invitation_workflow_id(iid) and accepted["status"] == "pending"
    assert accepted["links"] == {"self": f"/v1/tenants/{tid}/invitations/{iid}", "workflow": f"/v1/workflows/{wid}"}

    msg, token = await emailed_invitation_token(services.maildir, iid)
    assert msg["To"].lower() == address and "Acme Labs" in msg["Subject"]
    assert token.startswith(f"{tid}.")
    listed = (await api.get(f"/v1/tenants/{tid}/invitations", headers=owner.headers)).json()
    assert [(i["id"], i["role"], i["status"]) for i in listed] == [(iid, "admin", "pending")]
    assert listed[0]["email"].lower() == address and listed[0]["expires_at"] > listed[0]["created_at"]

    # No email address in the workflow id or its search attributes; tenant and inviter are there.
    description = await temporal_client.get_workflow_handle(wid).describe()
    attributes = {
        key.name: value
        for key, value in ((p.key, p.value) for p in description.typed_search_attributes.search_attributes)
    }
    assert description.typed_search_attributes.get(SA_TENANT_ID) == tid
    assert description.typed_search_attributes.get(SA_USER_ID) == str(owner.id)
    assert "example.com" not in wid + repr(attributes)

    grace = await person(api, app_engine, email=address)
    response = await api.post("/v1/invitations/accept", json={"token": token}, headers=grace.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"tenant_id": tid, "role": "admin", "status": "accepted"}

    members = {
        m["user_id"]: m["role"] for m in (await api.get(f"/v1/tenants/{tid}/members", headers=grace.headers)).json()
    }
    assert members == {str(owner.id): "owner", str(grace.id): "admin"}
    assert [(t["id"], t["role"]) for t in (await api.get("/v1/tenants", headers=grace.headers)).json()] == [
        (tid, "admin")
    ]
    assert (await wait_for_invitation(api, owner, tid, iid, "accepted"))["role"] == "admin"
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": token}, headers=grace.headers),
        409,
        "invitation-already-accepted",
    )
    assert_problem(
        await api.delete(f"/v1/tenants/{tid}/invitations/{iid}", headers=owner.headers),
        409,
        "invitation-already-accepted",
    )
    # Inviting a member again is refused.
    assert_problem(
        await api.post(
            f"/v1/tenants/{tid}/invitations", json={"email": address, "role": "member"}, headers=owner.headers
        ),
        409,
        "already-a-member",
    )


async def test_a_different_email_cannot_accept(api, app_engine, services):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    iid = (await invite(api, owner, tid, _address()))["invitation_id"]
    _, token = await emailed_invitation_token(services.maildir, iid)
    intruder = await person(api, app_engine)
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": token}, headers=intruder.headers),
        403,
        "invitation-email-mismatch",
    )
    assert_problem(await api.get(f"/v1/tenants/{tid}", headers=intruder.headers), 404, "not-found")
    assert (await wait_for_invitation(api, owner, tid, iid, "pending"))["id"] == iid
    assert_problem(await api.post("/v1/invitations/accept", json={"token": token}), 401, "unauthenticated")


async def test_revoked_invitation_cannot_be_accepted(api, app_engine, services):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    address = _address()
    iid = (await invite(api, owner, tid, address))["invitation_id"]
    _, token = await emailed_invitation_token(services.maildir, iid)

    revoked = await api.delete(f"/v1/tenants/{tid}/invitations/{iid}", headers=owner.headers)
    assert revoked.status_code == 204, revoked.text
    assert (await wait_for_invitation(api, owner, tid, iid, "revoked"))["status"] == "revoked"
    assert (await api.delete(f"/v1/tenants/{tid}/invitations/{iid}", headers=owner.headers)).status_code == 204

    invitee = await person(api, app_engine, email=address)
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": token}, headers=invitee.headers),
        410,
        "invitation-expired",
    )
    assert_problem(await api.get(f"/v1/tenants/{tid}", headers=invitee.headers), 404, "not-found")
    assert_problem(
        await api.delete(f"/v1/tenants/{tid}/invitations/{uuid.uuid4()}", headers=owner.headers), 404, "not-found"
    )


async def test_reinviting_revokes_the_older_invitation(api, app_engine, services):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    address = _address()
    first = (await invite(api, owner, tid, address))["invitation_id"]
    _, old_token = await emailed_invitation_token(services.maildir, first)
    second = (await invite(api, owner, tid, address.upper(), role="admin"))["invitation_id"]
    _, new_token = await emailed_invitation_token(services.maildir, second)
    assert first != second and old_token != new_token

    await wait_for_invitation(api, owner, tid, first, "revoked")
    await wait_for_invitation(api, owner, tid, second, "pending")
    invitee = await person(api, app_engine, email=address)
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": old_token}, headers=invitee.headers),
        410,
        "invitation-expired",
    )
    response = await api.post("/v1/invitations/accept", json={"token": new_token}, headers=invitee.headers)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "admin"


async def test_only_owners_and_admins_manage_invitations(api, app_engine):
    owner, admin, member, stranger = [await person(api, app_engine) for _ in range(4)]
    tid = await active_tenant(api, owner)
    await add_member(app_engine, tid, admin.id, "admin")
    await add_member(app_engine, tid, member.id, "member")
    url = f"/v1/tenants/{tid}/invitations"
    body = {"email": _address(), "role": "member"}

    assert_problem(await api.post(url, json=body, headers=member.headers), 403, "forbidden")
    assert_problem(await api.get(url, headers=member.headers), 403, "forbidden")
    assert_problem(await api.post(url, json=body, headers=stranger.headers), 404, "not-found")
    assert_problem(await api.get(url, headers=stranger.headers), 404, "not-found")
    assert_problem(await api.post(url, json={**body, "role": "owner"}, headers=owner.headers), 422, "validation-failed")
    assert_problem(await api.post(url, json={**body, "email": "nope"}, headers=owner.headers), 422, "validation-failed")
    assert_problem(
        await api.post(url, json={"email": member.email, "role": "admin"}, headers=admin.headers),
        409,
        "already-a-member",
    )
    iid = (await invite(api, admin, tid, body["email"]))["invitation_id"]  # an admin may invite
    assert_problem(await api.delete(f"{url}/{iid}", headers=member.headers), 403, "forbidden")
    assert (await wait_for_invitation(api, owner, tid, iid))["email"] == body["email"]


async def test_unusable_tokens_are_400(api, app_engine):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    for token in ("garbage", "not-a-uuid.secret", f"{tid}.not-the-secret", f"{uuid.uuid4()}.whatever"):
        assert_problem(
            await api.post("/v1/invitations/accept", json={"token": token}, headers=owner.headers), 400, "invalid-token"
        )
    assert_problem(
        await api.post("/v1/invitations/accept", json={"token": ""}, headers=owner.headers), 422, "validation-failed"
    )


async def test_idempotency_key_sends_one_invitation(api, app_engine, services):
    owner = await person(api, app_engine)
    tid = await active_tenant(api, owner)
    body, headers = {"email": _address(), "role": "member"}, {**owner.headers, "Idempotency-Key": str(uuid.uuid4())}
    first = await api.post(f"/v1/tenants/{tid}/invitations", json=body, headers=headers)
    assert first.status_code == 202, first.text
    iid = first.json()["invitation_id"]
    assert first.headers["Location"] == f"/v1/tenants/{tid}/invitations/{iid}"
    await emailed_invitation_token(services.maildir, iid)
    again = await api.post(f"/v1/tenants/{tid}/invitations", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["invitation_id"] == iid and again.json()["status"] == "pending"
    assert_problem(
        await api.post(f"/v1/tenants/{tid}/invitations", json={**body, "role": "admin"}, headers=headers),
        422,
        "idempotency-key-reused",
    )
    listed = (await api.get(f"/v1/tenants/{tid}/invitations", headers=owner.headers)).json()
    assert [(i["id"], i["status"]) for i in listed] == [(iid, "pending")]  # the replay revoked nothing
    sent = [m for m in read_messages(services.maildir) if m["To"] == body["email"]]
    assert len(sent) == 1

"""The email-change saga over HTTP on the real worker: reserve → verify the new address → swap → notify the old
one; expiry releases the reservation and revokes the token; a taken address is refused at once."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import httpx
from sqlmodel import select

from api.app import create_app
from models.db import transaction
from models.names import email_change_workflow_id, email_message_id
from models.tables import EmailChange, User, VerificationToken
from prognet_dev import message_text, read_messages
from tests.api.conftest import PASSWORD, assert_problem, person


def _address(prefix: str = "moved") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def _mail(maildir: Path, workflow_id: str, purpose: str, timeout: float = 20.0) -> EmailMessage:
    marker = str(email_message_id(workflow_id, purpose))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for msg in read_messages(maildir):
            if marker in str(msg.get("Message-ID", "")):
                return msg
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {purpose} email of {workflow_id}")
        await asyncio.sleep(0.1)


def _token(msg: EmailMessage) -> str:
    match = re.search(r"/verify-email\?token=([A-Za-z0-9._~%-]+)", message_text(msg))
    assert match, message_text(msg)
    return unquote(match.group(1))


async def _change(api, who, new_email: str, password: str = PASSWORD, key: str | None = None) -> httpx.Response:
    return await api.post(
        "/v1/me/email",
        json={"new_email": new_email, "current_password": password},
        headers={**who.headers, **({"Idempotency-Key": key} if key else {})},
    )


async def test_verified_change_swaps_the_address_and_tells_the_old_one(api, app_engine, services):
    ada = await person(api, app_engine)
    new_email = _address()
    response = await _change(api, ada, new_email, key=f"change-{uuid.uuid4()}")
    assert response.status_code == 202, response.text
    accepted = response.json()
    wid = accepted["workflow_id"]
    assert wid == email_change_workflow_id(accepted["change_id"]) and new_email not in wid
    assert response.headers["Location"] == accepted["links"]["self"] == f"/v1/workflows/{wid}"
    assert (await api.get(f"/v1/workflows/{wid}", headers=ada.headers)).json()["type"] == "EmailChange"

    verification = await _mail(services.maildir, wid, "verify-new-email")
    assert verification["To"] == new_email  # the new address proves itself
    # While pending, the address is reserved: no one else may register it or move to it.
    taken = await api.post("/v1/auth/register", json={"email": new_email.upper(), "password": PASSWORD})
    assert_problem(taken, 409, "email-already-registered")
    bob = await person(api, app_engine)
    assert_problem(await _change(api, bob, new_email), 409, "email-already-registered")

    verified = await api.post("/v1/auth/verify", json={"token": _token(verification)})
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"user_id": str(ada.id), "status": "verified"}
    assert (await api.get("/v1/me", headers=ada.headers)).json()["email"] == new_email
    assert_problem(await api.post("/v1/auth/verify", json={"token": _token(verification)}), 409, "token-already-used")

    notice = await _mail(services.maildir, wid, "email-changed")  # after the pivot, to the old address
    assert notice["To"] == ada.email and new_email in message_text(notice)
    login = await api.post("/v1/auth/login", json={"email": new_email, "password": PASSWORD})
    assert login.status_code == 200
    old = await api.post("/v1/auth/login", json={"email": ada.email, "password": PASSWORD})
    assert_problem(old, 401, "invalid-credentials")

    events = (await api.get("/v1/me/events", headers=ada.headers, params={"type": "user.email_"})).json()["items"]
    assert events == []  # "user.email_" is no type and no dot-ended prefix: nothing
    events = (await api.get("/v1/me/events", headers=ada.headers, params={"type": "user."})).json()["items"]
    changes = [e for e in events if e["type"].startswith("user.email_change")]
    assert [e["type"] for e in changes] == ["user.email_changed", "user.email_change_requested"]
    assert all(e["payload"]["change_id"] == accepted["change_id"] for e in changes)
    # an address appears only in the events that set the account's own (the user profile read model needs it)
    own = ("user.registered", "user.email_changed")
    assert all("@" not in str(e["payload"]) for e in events if e["type"] not in own)
    assert [e["payload"]["email"] for e in events if e["type"] == "user.email_changed"] == [new_email]


async def test_an_unverified_change_expires_releases_the_address_and_revokes_the_token(
    temporal_settings, temporal_client, services, app_engine
):
    settings = temporal_settings.model_copy(update={"email_change_verification_timeout": timedelta(seconds=2)})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as api:
            ada = await person(api, app_engine)
            new_email = _address("never")
            response = await _change(api, ada, new_email)
            assert response.status_code == 202, response.text
            wid = response.json()["workflow_id"]
            verification = await _mail(services.maildir, wid, "verify-new-email")

            result = await asyncio.wait_for(temporal_client.get_workflow_handle(wid).result(), 30)
            assert result["status"] == "expired"
            assert_problem(
                await api.post("/v1/auth/verify", json={"token": _token(verification)}), 410, "token-expired"
            )
            assert (await api.get("/v1/me", headers=ada.headers)).json()["email"] == ada.email
            events = (await api.get("/v1/me/events", headers=ada.headers, params={"type": "user."})).json()["items"]
            assert [e["type"] for e in events][:2] == ["user.email_change_expired", "user.email_change_requested"]
            assert events[0]["actor"] is None  # the saga's timer, not the user

    async with transaction(app_engine, user_id=ada.id) as db:
        change = (await db.exec(select(EmailChange).where(EmailChange.user_id == ada.id))).one()
        token = await db.get(VerificationToken, change.token_id)
    assert change.status == "expired" and change.closed_at is not None  # the reservation is released
    assert token is not None and token.revoked_at is not None and token.used_at is None


async def test_a_taken_address_or_a_wrong_password_is_refused_at_once(api, app_engine):
    ada, bob = await person(api, app_engine), await person(api, app_engine)
    assert_problem(await _change(api, ada, bob.email.upper()), 409, "email-already-registered")
    assert_problem(
        await _change(api, ada, _address(), password="not the password!!"), 403, "current-password-incorrect"
    )
    assert_problem(await _change(api, ada, "not an address"), 422, "validation-failed")
    async with transaction(app_engine, user_id=ada.id) as db:
        assert (await db.exec(select(EmailChange).where(EmailChange.user_id == ada.id))).all() == []
        assert (await db.get(User, ada.id)).email == ada.email

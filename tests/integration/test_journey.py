"""The registration + login journey end to end over HTTP on the real embedded stack."""

from __future__ import annotations

import base64
import uuid

import asyncpg
import httpx
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from models.names import email_message_id
from prognet_dev import EmbeddedStack
from tests.integration.conftest import PASSWORD, bearer, email_to, login, new_email, register_and_verify, token_from


async def test_register_verify_login_refresh_reuse_logout(http: httpx.AsyncClient, stack: EmbeddedStack):
    email = new_email("journey")
    r = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Ada"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    user_id = accepted["user_id"]
    assert accepted["workflow_id"] == f"registration-{user_id}"
    assert accepted["links"]["self"] == f"/v1/workflows/{accepted['workflow_id']}"

    # Not verified yet: the right password is refused with a clear error, not a 401.
    msg = await email_to(stack, email)
    r = await login(http, email)
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("account-not-verified")

    # The email: multipart text + HTML, a link whose `token` parameter verifies the account.
    assert msg.is_multipart()
    assert {part.get_content_type() for part in msg.walk()} >= {"text/plain", "text/html"}
    # one message per saga step, named by a business key: the same id in tracking, workflow and header
    message_id = email_message_id(f"registration-{user_id}", "verify")
    assert msg["Message-ID"] == f"<{message_id}@prognet>"
    token = token_from(msg)
    assert f"token={token}" in msg.get_body(("html",)).get_content()
    page = await http.get(f"/verify-email?token={token}")
    assert page.status_code == 200 and "Confirm" in page.text  # a GET verifies nothing
    r = await http.post("/v1/auth/verify", json={"token": token})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verified"
    r = await http.post("/v1/auth/verify", json={"token": token})
    assert r.status_code == 409  # used
    r = await http.post("/v1/auth/verify", json={"token": "not-a-token"})
    assert r.status_code == 400

    r = await login(http, email.upper())  # emails are case-insensitive
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900

    me = await http.get("/v1/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json()["id"] == user_id and me.json()["email"] == email and me.json()["status"] == "active"

    wf = await http.get(f"/v1/workflows/registration-{user_id}", headers=bearer(tokens))
    assert wf.status_code == 200, wf.text
    body = wf.json()
    assert body["status"] == "completed"
    assert body["saga"]["status"] == "completed"
    assert body["saga"]["completed_steps"] == [
        "create_pending_user",
        "issue_verification_token",
        "send_verification_email",
        "activate_user",
    ]

    # Refresh rotates; presenting the old refresh token again revokes the whole family.
    r = await http.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert (await http.get("/v1/me", headers=bearer(rotated))).status_code == 200
    r = await http.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    r = await http.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert r.status_code == 401
    assert (await http.get("/v1/me", headers=bearer(rotated))).status_code == 401

    # Logout revokes the access token at once.
    tokens = (await login(http, email)).json()
    assert (await http.get("/v1/me", headers=bearer(tokens))).status_code == 200
    r = await http.post("/v1/auth/logout", headers=bearer(tokens))
    assert r.status_code == 204
    r = await http.get("/v1/me", headers=bearer(tokens))
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]


async def test_duplicate_email_is_409_and_creates_no_second_user(http, stack: EmbeddedStack):
    email = new_email("dup")
    first = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert first.status_code == 202
    again = await http.post("/v1/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["type"].endswith("email-already-registered")
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        assert await conn.fetchval("select count(*) from users where lower(email) = lower($1)", email) == 1
    finally:
        await conn.close()


async def test_idempotency_key_returns_the_same_registration(http):
    email = new_email("idem")
    key = str(uuid.uuid4())
    body = {"email": email, "password": PASSWORD}
    first = await http.post("/v1/auth/register", json=body, headers={"Idempotency-Key": key})
    second = await http.post("/v1/auth/register", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["user_id"] == second.json()["user_id"]
    other = await http.post(
        "/v1/auth/register", json={"email": new_email("idem"), "password": PASSWORD}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-key-reused")


async def test_five_failures_lock_the_account_with_retry_after(http, stack):
    email = new_email("throttle")
    await register_and_verify(http, stack, email)
    for _ in range(5):
        assert (await login(http, email, "wrong password, long enough")).status_code == 401
    r = await login(http, email)  # even the right password waits out the window
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= 15 * 60
    unknown = await login(http, new_email("nobody"), "wrong password, long enough")
    wrong = await login(http, new_email("nobody"), "another wrong password")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json()["type"] == wrong.json()["type"]


async def test_no_password_or_email_in_history_ids_or_search_attributes(http, stack, temporal: Client):
    email = new_email("secret")
    password = "this-is-my-very-secret-password"
    r = await http.post("/v1/auth/register", json={"email": email, "password": password})
    assert r.status_code == 202
    handle = temporal.get_workflow_handle(r.json()["workflow_id"])
    await email_to(stack, email)
    history = await handle.fetch_history()
    raw = history.to_json()
    undone = raw + "".join(base64.b64decode(chunk).decode("utf-8", "replace") for chunk in _base64_chunks(raw))
    assert password not in undone
    assert email not in undone and "$argon2id$" not in undone  # without the codec: ciphertext
    decoded = await _through_the_codec(temporal, raw)
    assert password not in decoded
    assert "$argon2id$" in decoded and email in decoded  # what travels is the hash, encrypted
    desc = await handle.describe()
    assert email not in desc.id
    assert all(email not in str(v) for v in desc.search_attributes.values())
    assert desc.typed_search_attributes  # UserId, SagaStatus, SagaStep are set


async def _through_the_codec(temporal: Client, raw: str) -> str:
    """Every payload of a history's JSON, opened by the client's codec (the worker's keys)."""
    import json

    def payloads(node):
        if isinstance(node, dict):
            if isinstance(node.get("metadata"), dict) and "data" in node:
                yield Payload(
                    metadata={k: base64.b64decode(v) for k, v in node["metadata"].items()},
                    data=base64.b64decode(node["data"]),
                )
            else:
                for v in node.values():
                    yield from payloads(v)
        elif isinstance(node, list):
            for v in node:
                yield from payloads(v)

    codec = temporal.data_converter.payload_codec
    assert codec is not None
    opened = await codec.decode(list(payloads(json.loads(raw))))
    return "".join(p.data.decode("utf-8", "replace") for p in opened)


def _base64_chunks(raw: str):
    import json

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "data" and isinstance(v, str):
                    yield v
                else:
                    yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    yield from walk(json.loads(raw))


async def test_workflow_of_another_user_is_404(http, stack):
    a, b = new_email("a"), new_email("b")
    acc_a = await register_and_verify(http, stack, a)
    await register_and_verify(http, stack, b)
    tokens_b = (await login(http, b)).json()
    r = await http.get(f"/v1/workflows/{acc_a['workflow_id']}", headers=bearer(tokens_b))
    assert r.status_code == 404
    r = await http.get("/v1/workflows/registration-does-not-exist", headers=bearer(tokens_b))
    assert r.status_code == 404

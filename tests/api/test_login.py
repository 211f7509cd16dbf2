"""Login, sessions, refresh rotation, logout, and the throttle — over HTTP on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

import httpx
from argon2 import PasswordHasher
from sqlmodel import select

from api.login_throttle import account_address_key, account_key, address_key
from models.db import transaction
from models.tables import DomainEvent, User
from prognet import passwords
from tests.api.conftest import PASSWORD, assert_problem, bearer, insert_user, login


async def test_login_returns_a_token_pair_that_opens_me(client, user, engine):
    tokens = await login(client, user)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 15 * 60
    assert tokens["refresh_token"].count(".") == 1

    me = await client.get("/v1/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    body = me.json()
    assert body["id"] == str(user.id)
    assert body["email"] == user.email
    assert body["status"] == "active"
    assert set(body) == {
        "id",
        "email",
        "display_name",
        "status",
        "created_at",
        "verified_at",
        "last_login_at",  # the user profile read model (or the primary before it is projected)
        "memberships",
    }
    assert body["memberships"] == [] and body["last_login_at"] is not None

    async with transaction(engine, user_id=user.id) as db:  # a user's own events: visible to that user only
        events = (await db.exec(select(DomainEvent).where(DomainEvent.aggregate_id == str(user.id)))).all()
    assert [e.type for e in events] == ["user.logged_in"]
    assert "session_id" in events[0].payload
    assert "@" not in str(events[0].payload)


async def test_login_email_is_case_insensitive(client, user):
    response = await client.post("/v1/auth/login", json={"email": user.email.upper(), "password": PASSWORD})
    assert response.status_code == 200


async def test_unknown_email_and_wrong_password_get_the_same_401(client, user):
    wrong = await client.post("/v1/auth/login", json={"email": user.email, "password": "not the right password"})
    unknown = await client.post("/v1/auth/login", json={"email": "nobody-here@example.com", "password": PASSWORD})
    assert_problem(wrong, 401, "invalid-credentials")
    assert_problem(unknown, 401, "invalid-credentials")
    # the same answer, but for each request's own trace id
    assert {**wrong.json(), "trace_id": None} == {**unknown.json(), "trace_id": None}


async def test_unverified_account_is_refused_with_403(client, engine):
    pending = await insert_user(engine, status="pending")
    response = await client.post("/v1/auth/login", json={"email": pending.email, "password": PASSWORD})
    body = assert_problem(response, 403, "account-not-verified")
    assert "verif" in body["detail"]


async def test_five_failures_from_one_address_throttle_it_with_retry_after(client, user, redis, settings):
    for _ in range(settings.login_max_failures):
        response = await client.post("/v1/auth/login", json={"email": user.email, "password": "wrong password!!"})
        assert response.status_code == 401
    locked = await client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert_problem(locked, 429, "too-many-attempts")
    retry_after = int(locked.headers["Retry-After"])
    assert 0 < retry_after <= settings.login_failure_window_seconds
    # Keyed on hashes of the account and the client address (not the account alone), never the raw email.
    keys = await redis.keys("login:failures:*")
    assert sorted(keys) == sorted(
        [account_key(user.email), account_address_key(user.email, "127.0.0.1"), address_key("127.0.0.1")]
    )
    assert all("@" not in k for k in await redis.keys("*"))


async def test_a_burst_of_concurrent_guesses_gets_no_more_than_the_limit(client, user, settings):
    # Every attempt reserves its failure slot before the (slow) password check, atomically.
    responses = await asyncio.gather(
        *(
            client.post("/v1/auth/login", json={"email": user.email, "password": f"wrong password {i}!"})
            for i in range(20)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(401) == settings.login_max_failures
    assert codes.count(429) == 20 - settings.login_max_failures


async def test_the_right_password_of_an_unverified_account_is_not_a_failure(client, engine, settings):
    pending = await insert_user(engine, status="pending")
    for _ in range(settings.login_max_failures + 2):
        r = await client.post("/v1/auth/login", json={"email": pending.email, "password": PASSWORD})
        assert_problem(r, 403, "account-not-verified")


async def test_unknown_email_is_throttled_too(client, settings):
    for _ in range(settings.login_max_failures):
        await client.post("/v1/auth/login", json={"email": "ghost@example.com", "password": "wrong password!!"})
    response = await client.post("/v1/auth/login", json={"email": "Ghost@example.com", "password": PASSWORD})
    assert_problem(response, 429, "too-many-attempts")


async def test_success_clears_the_failure_count(client, user, settings):
    for _ in range(settings.login_max_failures - 1):
        await client.post("/v1/auth/login", json={"email": user.email, "password": "wrong password!!"})
    await login(client, user)
    for _ in range(settings.login_max_failures - 1):
        response = await client.post("/v1/auth/login", json={"email": user.email, "password": "wrong password!!"})
        assert response.status_code == 401


async def test_outdated_hash_is_rehashed_on_login(client, engine, settings):
    old = PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1).hash(PASSWORD)
    account = await insert_user(engine, password_hash=old)
    await login(client, account)
    async with transaction(engine) as db:
        stored = await db.get(User, account.id)
    assert stored.password_hash != old
    assert f"t={settings.argon2_time_cost}" in stored.password_hash
    await login(client, account)  # the new hash verifies


async def test_a_rehash_does_not_overwrite_a_password_changed_meanwhile(client, engine, monkeypatch):
    old = PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1).hash(PASSWORD)
    changed = PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1).hash("the owner's new password")
    account = await insert_user(engine, password_hash=old)
    rehash = passwords.hash_password

    async def change_then_rehash(settings, password):  # the owner changes the password while the login rehashes
        async with transaction(engine) as db:
            stored = await db.get(User, account.id)
            stored.password_hash = changed
            db.add(stored)
        return await rehash(settings, password)

    monkeypatch.setattr(passwords, "hash_password", change_then_rehash)
    await login(client, account)
    async with transaction(engine) as db:
        assert (await db.get(User, account.id)).password_hash == changed


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(client, user):
    first = await login(client, user)
    rotated = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["refresh_token"].split(".")[0] == first["refresh_token"].split(".")[0]  # same session
    assert (await client.get("/v1/me", headers=bearer(second["access_token"]))).status_code == 200

    reused = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    body = assert_problem(reused, 401, "invalid-refresh-token")
    assert "revoked" in body["detail"]

    # The whole family is gone: the newest refresh token and every access token of the session.
    latest = await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(latest, 401, "invalid-refresh-token")
    for access in (first["access_token"], second["access_token"]):
        assert_problem(await client.get("/v1/me", headers=bearer(access)), 401, "invalid-access-token")


async def test_concurrent_refreshes_with_one_token_have_one_winner(client, user):
    tokens = await login(client, user)
    responses = await asyncio.gather(
        *[client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}) for _ in range(5)]
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401, 401]


async def test_unknown_and_malformed_refresh_tokens_are_401(client, user):
    tokens = await login(client, user)
    sid = tokens["refresh_token"].split(".")[0]
    for token in (f"{sid}.not-the-secret", "garbage", "0" * 32 + ".x"):
        assert_problem(
            await client.post("/v1/auth/refresh", json={"refresh_token": token}), 401, "invalid-refresh-token"
        )
    # A wrong secret for a live session does not revoke it.
    assert (await client.get("/v1/me", headers=bearer(tokens["access_token"]))).status_code == 200


async def test_logout_revokes_access_and_refresh_tokens(client, user):
    tokens = await login(client, user)
    other = await login(client, user)  # a second session stays alive
    response = await client.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert response.content == b""

    rejected = await client.get("/v1/me", headers=bearer(tokens["access_token"]))
    assert_problem(rejected, 401, "invalid-access-token")
    assert rejected.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(
        await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        401,
        "invalid-refresh-token",
    )
    assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200


async def test_me_without_a_token_is_401_with_a_bearer_challenge(client: httpx.AsyncClient):
    response = await client.get("/v1/me")
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"

"""Password change (other sessions end, this one stays) and the security events of logins and sessions."""

from __future__ import annotations

from sqlmodel import select

from models.db import transaction
from models.tables import DomainEvent
from tests.api.conftest import PASSWORD, assert_problem, bearer, login

NEW_PASSWORD = "a brand new passphrase"


async def _events(engine, user_id, type_: str) -> list[DomainEvent]:
    async with transaction(engine, user_id=user_id) as db:
        return list(
            (await db.exec(select(DomainEvent).where(DomainEvent.user_id == user_id, DomainEvent.type == type_))).all()
        )


async def test_password_change_ends_every_other_session_but_keeps_the_callers(client, user, engine):
    mine, *others = [await login(client, user) for _ in range(3)]
    response = await client.post(
        "/v1/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(mine["access_token"]),
    )
    assert response.status_code == 204, response.text

    for other in others:
        assert_problem(await client.get("/v1/me", headers=bearer(other["access_token"])), 401, "invalid-access-token")
        refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert_problem(refreshed, 401, "invalid-refresh-token")
    assert (await client.get("/v1/me", headers=bearer(mine["access_token"]))).status_code == 200
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": mine["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text

    old = await client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert_problem(old, 401, "invalid-credentials")
    assert (
        await client.post("/v1/auth/login", json={"email": user.email, "password": NEW_PASSWORD})
    ).status_code == 200

    [changed] = await _events(engine, user.id, "user.password_changed")
    assert changed.payload == {"sessions_revoked": 2} and changed.actor_id == user.id


async def test_a_wrong_current_password_is_refused_and_throttled_like_a_login(client, user, engine, settings):
    headers = bearer((await login(client, user))["access_token"])
    body = {"current_password": "not my password at all", "new_password": NEW_PASSWORD}
    for _ in range(settings.login_max_failures):
        assert_problem(
            await client.post("/v1/me/password", json=body, headers=headers), 403, "current-password-incorrect"
        )
    # the limit reached: even the right password waits, and a login from this address is throttled too
    right = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    throttled = await client.post("/v1/me/password", json=right, headers=headers)
    assert_problem(throttled, 429, "too-many-attempts")
    assert int(throttled.headers["Retry-After"]) > 0
    client.cookies.clear()  # a client without the account's device cookie (see LoginThrottle)
    assert_problem(
        await client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD}), 429, "too-many-attempts"
    )
    failed = await _events(engine, user.id, "user.login_failed")
    assert [e.payload for e in failed] == [{"reason": "wrong_current_password"}] * settings.login_max_failures
    assert await _events(engine, user.id, "user.password_changed") == []
    # validated like a registration's password
    short = {"current_password": PASSWORD, "new_password": "short"}
    assert_problem(await client.post("/v1/me/password", json=short, headers=headers), 422, "validation-failed")


async def test_logins_failures_locks_reuse_and_logout_are_events(client, user, engine, settings):
    first = await login(client, user)
    for _ in range(settings.login_max_failures):
        wrong = await client.post("/v1/auth/login", json={"email": user.email, "password": "wrong password!!"})
        assert wrong.status_code == 401
    for _ in range(3):  # hammering a locked account: one event per lock, not per attempt
        locked = await client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
        assert locked.status_code == 429
    assert (await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).status_code == 200
    assert (await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).status_code == 401
    session_id = first["refresh_token"].split(".")[0]

    assert [e.payload for e in await _events(engine, user.id, "user.logged_in")] == [{"session_id": session_id}]
    failed = await _events(engine, user.id, "user.login_failed")
    assert [e.payload for e in failed] == [{"reason": "wrong_password"}] * settings.login_max_failures
    [lock] = await _events(engine, user.id, "user.login_locked")
    assert 0 < lock.payload["retry_after_seconds"] <= settings.login_failure_window_seconds
    [revoked] = await _events(engine, user.id, "user.session_family_revoked")
    assert revoked.payload == {"session_id": session_id, "reason": "refresh_token_reused"}

    assert all("@" not in str(e.payload) for e in [*failed, lock, revoked])


async def test_logout_is_an_event(client, user, engine):
    tokens = await login(client, user)
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))).status_code == 204
    [out] = await _events(engine, user.id, "user.logged_out")
    assert out.payload == {"session_id": tokens["refresh_token"].split(".")[0]} and out.actor_id == user.id

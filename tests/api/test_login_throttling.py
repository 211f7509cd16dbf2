"""Login throttling: an attacker cannot lock out the victim, a distributed guesser is still slowed, a stolen
device cookie is still limited; client addresses come from the socket peer or a trusted proxy only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.login_throttle import (
    BASE_DELAY_SECONDS,
    CROSS_LIMIT_FACTOR,
    DEVICE_COOKIE,
    DeviceCookies,
    address_key,
    device_key,
)
from tests.api.conftest import PASSWORD, assert_problem

WRONG = "not the password at all"


@asynccontextmanager
async def client_at(app: FastAPI, address: str, cookie: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose socket peer is `address`, presenting `cookie` as its device cookie."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 40000))
    cookies = {DEVICE_COOKIE: cookie} if cookie else None
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test", cookies=cookies) as c:
        yield c


async def attempt(client: httpx.AsyncClient, email: str, password: str = WRONG) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password})


async def device_cookie(app: FastAPI, email: str, address: str = "10.0.0.1") -> str:
    async with client_at(app, address) as victim:
        response = await attempt(victim, email, PASSWORD)
        assert response.status_code == 200, response.text
        return response.cookies[DEVICE_COOKIE]


async def test_a_successful_login_sets_a_signed_device_cookie_bound_to_the_account(app, user, settings):
    async with client_at(app, "10.0.0.1") as victim:
        response = await attempt(victim, user.email, PASSWORD)
    assert response.status_code == 200
    header = response.headers["set-cookie"]
    assert header.startswith(f"{DEVICE_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/v1/auth", "Max-Age="):
        assert attribute in header, header
    assert "Secure" not in header  # development serves plain HTTP
    cookie = response.cookies[DEVICE_COOKIE]
    cookies = DeviceCookies(settings.derived_key("device-cookie"))
    assert cookies.device_of(cookie, user.email.upper()) is not None
    assert cookies.device_of(cookie, "someone-else@example.com") is None  # bound to the account
    assert cookies.device_of(cookie[:-2] + "xx", user.email) is None  # signed
    assert "@" not in cookie


async def test_the_device_cookie_is_secure_outside_development(settings, schema, user):
    app = create_app(settings.model_copy(update={"environment": "production"}))
    async with app.router.lifespan_context(app), client_at(app, "10.0.0.1") as c:
        response = await attempt(c, user.email, PASSWORD)
    assert response.status_code == 200
    assert "Secure" in response.headers["set-cookie"]


async def test_an_attacker_cannot_lock_out_the_victim(app, user, settings):
    cookie = await device_cookie(app, user.email, "10.0.0.1")
    # Guessing from another address, and from the victim's own address, without the victim's cookie.
    for address in ("192.0.2.66", "10.0.0.1"):
        async with client_at(app, address) as attacker:
            for _ in range(settings.login_max_failures):
                assert_problem(await attempt(attacker, user.email), 401, "invalid-credentials")
            throttled = await attempt(attacker, user.email, PASSWORD)
            assert_problem(throttled, 429, "too-many-attempts")
            assert int(throttled.headers["Retry-After"]) > 0

    # The victim presenting the device cookie logs in, from the usual address or another one.
    for address in ("10.0.0.1", "198.51.100.7"):
        async with client_at(app, address, cookie) as victim:
            assert (await attempt(victim, user.email, PASSWORD)).status_code == 200


async def test_the_attackers_failures_elsewhere_do_not_lock_out_a_victim_without_the_cookie(app, user, settings):
    async with client_at(app, "192.0.2.66") as attacker:
        for _ in range(settings.login_max_failures):
            assert_problem(await attempt(attacker, user.email), 401, "invalid-credentials")
        assert_problem(await attempt(attacker, user.email, PASSWORD), 429, "too-many-attempts")
    async with client_at(app, "10.0.0.1") as victim:  # a new browser: no device cookie yet
        assert (await attempt(victim, user.email, PASSWORD)).status_code == 200


async def test_a_distributed_guesser_is_still_slowed_by_the_account_wide_limit(app, user, settings):
    cookie = await device_cookie(app, user.email)
    account_limit = CROSS_LIMIT_FACTOR * settings.login_max_failures
    for i in range(account_limit):  # one guess per address: no per-address counter ever fills
        async with client_at(app, f"203.0.113.{i + 1}") as bot:
            assert_problem(await attempt(bot, user.email), 401, "invalid-credentials")
    async with client_at(app, "203.0.113.250") as bot:  # even the right password, from a fresh address
        throttled = await attempt(bot, user.email, PASSWORD)
    assert_problem(throttled, 429, "too-many-attempts")
    assert 0 < int(throttled.headers["Retry-After"]) <= BASE_DELAY_SECONDS
    # The account's owner on a known device is not affected.
    async with client_at(app, "10.0.0.1", cookie) as victim:
        assert (await attempt(victim, user.email, PASSWORD)).status_code == 200


async def test_a_stolen_device_cookie_is_still_limited_with_growing_delays(app, user, settings, redis):
    cookie = await device_cookie(app, user.email)
    device_id = DeviceCookies(settings.derived_key("device-cookie")).device_of(cookie, user.email)
    assert device_id is not None
    async with client_at(app, "192.0.2.66", cookie) as thief:
        for _ in range(settings.login_max_failures):
            assert_problem(await attempt(thief, user.email), 401, "invalid-credentials")
        first = await attempt(thief, user.email, PASSWORD)
        assert_problem(first, 429, "too-many-attempts")
        assert BASE_DELAY_SECONDS - 5 <= int(first.headers["Retry-After"]) <= BASE_DELAY_SECONDS

        # Let the first delay pass (move the recorded failures back in time): one more guess, then twice the wait.
        key = device_key(device_id)
        for member, score in await redis.zrange(key, 0, -1, withscores=True):
            await redis.zadd(key, {member: score - BASE_DELAY_SECONDS - 1})
        assert_problem(await attempt(thief, user.email), 401, "invalid-credentials")
        second = await attempt(thief, user.email, PASSWORD)
        assert_problem(second, 429, "too-many-attempts")
        assert 2 * BASE_DELAY_SECONDS - 5 <= int(second.headers["Retry-After"]) <= 2 * BASE_DELAY_SECONDS


async def test_forwarded_for_counts_only_from_a_trusted_proxy(settings, schema, user, redis):
    app = create_app(settings.model_copy(update={"trusted_proxies": "10.0.0.0/8, fd00::/8"}))
    async with app.router.lifespan_context(app):
        async with client_at(app, "10.1.2.3") as proxy:
            forwarded = {"X-Forwarded-For": "198.51.100.99, 203.0.113.5, 10.9.9.9"}
            r = await proxy.post("/v1/auth/login", json={"email": user.email, "password": WRONG}, headers=forwarded)
            assert r.status_code == 401
        async with client_at(app, "192.0.2.1") as direct:
            spoofed = {"X-Forwarded-For": "203.0.113.77"}
            r = await direct.post("/v1/auth/login", json={"email": user.email, "password": WRONG}, headers=spoofed)
            assert r.status_code == 401
    # The rightmost untrusted hop behind the proxies; a direct client's header is ignored.
    assert await redis.exists(address_key("203.0.113.5"))
    assert await redis.exists(address_key("192.0.2.1"))
    assert not await redis.exists(address_key("198.51.100.99"))
    assert not await redis.exists(address_key("203.0.113.77"))

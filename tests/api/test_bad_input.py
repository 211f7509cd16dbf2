"""Bad input of every kind is a clear 4xx problem+json, never a 500, and writes nothing."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select

from api.app import create_app
from models.db import transaction
from models.tables import DomainEvent
from tests.api.conftest import PASSWORD, assert_problem

LOGIN = "/v1/auth/login"


async def _nothing_written(engine, redis) -> int:
    """Number of domain events, after asserting Redis holds no session and no failure counter."""
    async with transaction(engine, platform=True) as db:  # every event, whoever it concerns
        logins = (await db.exec(select(func.count()).select_from(DomainEvent))).one()
    assert await redis.keys("session:*") == []
    assert await redis.keys("login:failures:*") == []
    return logins


async def test_malformed_json_is_400(client, engine, redis):
    before = await _nothing_written(engine, redis)
    response = await client.post(
        LOGIN, content=b'{"email": "a@example.com", "password": ', headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "malformed-json")
    assert await _nothing_written(engine, redis) == before


async def test_extra_field_is_422_naming_it(client, user):
    response = await client.post(LOGIN, json={"email": user.email, "password": PASSWORD, "admin": True})
    body = assert_problem(response, 422, "validation-failed")
    assert {"loc": ["body", "admin"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"} in body[
        "errors"
    ]


async def test_missing_field_is_422_naming_it(client):
    body = assert_problem(await client.post(LOGIN, json={"email": "a@example.com"}), 422, "validation-failed")
    assert [e["loc"] for e in body["errors"]] == [["body", "password"]]


async def test_invalid_email_is_422(client):
    body = assert_problem(
        await client.post(LOGIN, json={"email": "not-an-email", "password": PASSWORD}), 422, "validation-failed"
    )
    assert [e["loc"] for e in body["errors"]] == [["body", "email"]]


@pytest.mark.parametrize("password", ["x" * 11, "y" * 1025])
async def test_password_length_bounds_are_422_and_never_echoed(client, engine, redis, password):
    before = await _nothing_written(engine, redis)
    for path in (LOGIN, "/v1/auth/register"):
        response = await client.post(path, json={"email": "a@example.com", "password": password})
        body = assert_problem(response, 422, "validation-failed")
        assert [e["loc"] for e in body["errors"]] == [["body", "password"]]
        assert password not in response.text
    assert await _nothing_written(engine, redis) == before


async def test_password_at_the_bounds_is_accepted_by_validation(client):
    for password in ("z" * 12, "z" * 1024):
        response = await client.post(LOGIN, json={"email": "nobody@example.com", "password": password})
        assert_problem(response, 401, "invalid-credentials")


async def test_body_over_64_kib_is_413(client, engine, redis):
    before = await _nothing_written(engine, redis)
    big = json.dumps({"email": "a@example.com", "password": PASSWORD, "pad": "p" * (64 * 1024)})
    response = await client.post(LOGIN, content=big, headers={"Content-Type": "application/json"})
    body = assert_problem(response, 413, "payload-too-large")
    assert body["instance"] == LOGIN
    assert await _nothing_written(engine, redis) == before


async def test_streamed_body_over_64_kib_is_413_without_content_length(client):
    async def chunks():
        yield b'{"email": "a@example.com", "password": "'
        for _ in range(20):
            yield b"q" * 4096
        yield b'"}'

    response = await client.post(LOGIN, content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")


async def test_lying_content_length_is_still_counted(app):
    """A body longer than its declared Content-Length is cut off at the limit, not trusted."""
    sent: list[dict] = []
    body = b"x" * (64 * 1024 + 10)
    messages = [
        {"type": "http.request", "body": body[:40000], "more_body": True},
        {"type": "http.request", "body": body[40000:], "more_body": False},
    ]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": LOGIN,
        "raw_path": LOGIN.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")],
        "client": ("127.0.0.1", 1),
        "server": ("api.test", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413


async def test_wrong_content_type_is_415(client, user):
    response = await client.post(
        LOGIN,
        content=f"email={user.email}&password={PASSWORD}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported-media-type")
    response = await client.post(
        LOGIN, content=json.dumps({"email": user.email, "password": PASSWORD}), headers={"Content-Type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_json_with_charset_is_accepted(client, user):
    response = await client.post(
        LOGIN,
        content=json.dumps({"email": user.email, "password": PASSWORD}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


async def test_unknown_route_is_404_problem(client):
    assert_problem(await client.get("/v1/nope"), 404, "not-found")


async def test_wrong_method_is_405_problem(client):
    response = await client.get(LOGIN)
    assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]


async def test_unhandled_error_is_a_500_problem_without_internals(settings, schema):
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            response = await client.get("/boom")
    body = assert_problem(response, 500, "internal-error")
    assert "secret internal detail" not in response.text
    assert body["detail"] == "An unexpected error occurred."


async def test_a_lone_surrogate_in_a_password_is_bad_input_not_a_500(client):
    body = b'{"email": "x@example.com", "password": "abcdefghijkl\\ud800"}'
    for path in ("/v1/auth/register", "/v1/auth/login"):
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (path, r.text)


async def test_control_characters_in_a_display_name_are_refused(client):
    r = await client.post(
        "/v1/auth/register",
        json={
            "email": "x@example.com",
            "password": "long enough password",
            "display_name": "Ada\r\nBcc: victim@example.com",
        },
    )
    assert r.status_code == 422

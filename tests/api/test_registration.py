"""Registration over HTTP on a real Temporal dev server with the real worker, PostgreSQL, Redis and SMTP."""

from __future__ import annotations

import asyncio
import gc
import uuid

from sqlmodel import select

from api import saga_start
from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem
from models.db import transaction
from models.names import registration_workflow_id
from models.tables import User
from prognet_dev import read_messages
from tests.api.conftest import PASSWORD, assert_problem, bearer, wait_for_token


def _email() -> str:
    return f"new-{uuid.uuid4().hex[:10]}@example.com"


async def _register(api, email: str, key: str | None = None, display_name: str | None = "Ada", status: int = 202):
    body = {"email": email, "password": PASSWORD}
    if display_name is not None:
        body["display_name"] = display_name
    response = await api.post("/v1/auth/register", json=body, headers={"Idempotency-Key": key} if key else {})
    assert response.status_code == status, response.text
    if status == 202:  # where the caller follows the saga it started
        assert response.headers["Location"] == f"/v1/workflows/{response.json()['workflow_id']}"
    return response.json()


async def test_register_verify_login_and_follow_the_saga(api, temporal_app, temporal_client, services):
    email = _email()
    accepted = await _register(api, email)
    user_id = accepted["user_id"]
    wid = accepted["workflow_id"]
    assert wid == registration_workflow_id(user_id)
    assert accepted["links"] == {"self": f"/v1/workflows/{wid}", "verify": "/v1/auth/verify"}

    # The pending user exists as soon as the API answers; it cannot log in yet.
    assert_problem(
        await api.post("/v1/auth/login", json={"email": email, "password": PASSWORD}), 403, "account-not-verified"
    )

    token = await wait_for_token(temporal_app, user_id)
    verified = await api.post("/v1/auth/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"user_id": user_id, "status": "verified"}
    assert_problem(await api.post("/v1/auth/verify", json={"token": token}), 409, "token-already-used")

    login = await api.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200
    headers = bearer(login.json()["access_token"])
    me = (await api.get("/v1/me", headers=headers)).json()
    assert me["status"] == "active" and me["verified_at"] and me["display_name"] == "Ada"

    view = await api.get(f"/v1/workflows/{wid}", headers=headers)
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["type"] == "Registration" and body["status"] == "completed"
    assert body["saga"]["status"] == "completed" and body["started_at"] and body["closed_at"]

    # The verification email went out; the plaintext password is nowhere in the workflow history.
    assert any(msg["To"] == email for msg in read_messages(services.maildir))
    history = await temporal_client.get_workflow_handle(wid).fetch_history()
    assert PASSWORD.encode() not in history.to_json().encode()


async def test_duplicate_email_is_409(api):
    email = _email()
    await _register(api, email)
    response = await api.post("/v1/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert_problem(response, 409, "email-already-registered")


async def test_same_idempotency_key_returns_the_same_registration(api):
    key, email = f"key-{uuid.uuid4()}", _email()
    first = await _register(api, email, key)
    again = await _register(api, email, key)
    assert again["user_id"] == first["user_id"] and again["workflow_id"] == first["workflow_id"]
    reused = await api.post(
        "/v1/auth/register", json={"email": _email(), "password": PASSWORD}, headers={"Idempotency-Key": key}
    )
    assert_problem(reused, 422, "idempotency-key-reused")


async def test_idempotent_replay_after_the_saga_closed_answers_its_status(api, temporal_app):
    key, email = f"key-{uuid.uuid4()}", _email()
    first = await _register(api, email, key)
    token = await wait_for_token(temporal_app, first["user_id"])
    assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
    replay = await _register(api, email, key)
    assert replay["workflow_id"] == first["workflow_id"]
    assert replay["status"] == "completed"
    async with transaction(temporal_app.state.engine) as db:
        users = (await db.exec(select(User).where(User.email == email))).all()
    assert len(users) == 1


async def test_a_replay_after_the_saga_closed_must_carry_the_same_body(api, temporal_app):
    key, email = f"key-{uuid.uuid4()}", _email()
    first = await _register(api, email, key)
    token = await wait_for_token(temporal_app, first["user_id"])
    assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
    other = await api.post(
        "/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "Bob"},
        headers={"Idempotency-Key": key},
    )
    assert_problem(other, 422, "idempotency-key-reused")
    same = await _register(api, email, key)
    assert same["workflow_id"] == first["workflow_id"] and same["status"] == "completed"


async def test_unknown_verification_token_is_400(api):
    assert_problem(await api.post("/v1/auth/verify", json={"token": "no-such-token"}), 400, "invalid-token")


async def test_someone_elses_workflow_is_404_like_a_missing_one(api, temporal_app):
    owner = await _register(api, _email())
    other_email = _email()
    other = await _register(api, other_email)
    token = await wait_for_token(temporal_app, other["user_id"])
    assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
    headers = bearer(
        (await api.post("/v1/auth/login", json={"email": other_email, "password": PASSWORD})).json()["access_token"]
    )

    foreign = await api.get(f"/v1/workflows/{owner['workflow_id']}", headers=headers)
    missing = await api.get(f"/v1/workflows/registration-{uuid.uuid4()}", headers=headers)
    assert_problem(foreign, 404, "not-found")
    assert_problem(missing, 404, "not-found")
    assert foreign.json()["detail"] == missing.json()["detail"]
    assert_problem(await api.get(f"/v1/workflows/{other['workflow_id']}"), 401, "unauthenticated")


async def test_readyz_is_200_when_everything_answers(api):
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok", "temporal": "ok"}}


async def test_idempotent_replay_of_a_refused_duplicate_is_409_again(api):
    email = _email()
    await _register(api, email)
    key = f"key-{uuid.uuid4()}"
    for _ in range(2):  # the second time the saga has already closed
        response = await api.post(
            "/v1/auth/register",
            json={"email": email, "password": PASSWORD, "display_name": "Ada"},
            headers={"Idempotency-Key": key},
        )
        assert_problem(response, 409, "email-already-registered")


async def _answer_lost(call, timeout: float = 0.0):
    """The saga answers, but too late for the request: its 503 is all the client sees."""
    await call
    raise Problem(WORKFLOW_ENGINE_UNAVAILABLE, "not confirmed in time", headers={"Retry-After": "5"})


async def test_a_plain_retry_after_a_503_finds_the_registration_it_started(api, monkeypatch):
    email = _email()
    body = {"email": email, "password": PASSWORD, "display_name": "Ada"}
    with monkeypatch.context() as patched:
        patched.setattr(saga_start, "answer_within", _answer_lost)
        lost = await api.post("/v1/auth/register", json=body)
    problem = assert_problem(lost, 503, "workflow-engine-unavailable")
    user_id, workflow_id = problem["user_id"], problem["workflow_id"]
    assert workflow_id == registration_workflow_id(user_id)
    assert lost.headers["Retry-After"] == "5" and lost.headers["Location"] == f"/v1/workflows/{workflow_id}"
    assert problem["links"] == {"self": f"/v1/workflows/{workflow_id}"}

    # the same request, still without an Idempotency-Key: its own registration, not a 409
    retried = await _register(api, email.upper())
    assert retried["user_id"] == user_id and retried["workflow_id"] == workflow_id
    assert (await _register(api, email))["user_id"] == user_id
    # anyone else's request for that email (another password) is still refused
    other = await api.post("/v1/auth/register", json={**body, "password": PASSWORD + "!"})
    assert_problem(other, 409, "email-already-registered")


async def test_a_plain_repeat_after_a_202_is_still_409(api):
    email = _email()
    await _register(api, email)
    assert_problem(
        await api.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Ada"}),
        409,
        "email-already-registered",
    )


async def test_replaying_a_closed_sagas_key_leaves_no_unretrieved_future(api, temporal_app):
    """The update-with-start that finds the closed saga fails inside the SDK too (WorkflowAlreadyStartedError):
    that failure is retrieved, so asyncio never logs "Future exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    try:
        key, email = f"key-{uuid.uuid4()}", _email()
        first = await _register(api, email, key)
        token = await wait_for_token(temporal_app, first["user_id"])
        assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
        for _ in range(3):
            assert (await _register(api, email, key))["status"] == "completed"
        gc.collect()  # an unretrieved future reports itself when it is collected
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(previous)
    assert not [m for m in reported if "never retrieved" in m], reported

"""Paid sign-up over HTTP on the real stack: real worker and activities, PostgreSQL, the Stripe sandbox, SMTP.

The 60-second dev plan has no trial, so the sign-up charges its first period at once.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from api import saga_start
from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem
from models.names import (
    SA_TENANT_ID,
    SA_USER_ID,
    registration_workflow_id,
    subscription_workflow_id,
    tenant_workflow_id,
)
from prognet_dev import read_messages
from prognet_dev.stripe_sandbox import SandboxAdmin
from tests.api.conftest import (
    PASSWORD,
    active_tenant,
    assert_problem,
    bearer,
    insert_user,
    new_slug,
    person,
    wait_for_token,
)
from tests.support.signup import SIGNUP_PLAN, signup_body

PLAN = SIGNUP_PLAN


@pytest.fixture
async def owner_db(services):
    """The table owner's connection: sees every tenant's rows, to check nothing is left behind."""
    db = await asyncpg.connect(services.postgres_dsn)
    yield db
    await db.close()


async def _mail_to(services, address: str, count: int, timeout: float) -> list:
    """The messages in the SMTP sink's Maildir addressed to `address`, once there are `count` (or time is up)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [m for m in read_messages(services.maildir) if address.lower() in str(m.get("To", "")).lower()]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.2)


async def _left_behind(db: asyncpg.Connection, stripe: SandboxAdmin, body: dict, answer: dict) -> dict:
    tenant_id = uuid.UUID(answer["tenant_id"]) if "tenant_id" in answer else None
    customers = [
        c for c in await stripe.customers() if tenant_id and c.get("metadata", {}).get("tenant_id") == str(tenant_id)
    ]
    return {
        "users": await db.fetchval("select count(*) from users where lower(email) = lower($1)", body["email"]),
        "tenants": await db.fetchval("select count(*) from tenants where slug = $1", body["slug"]),
        "subscriptions": await db.fetchval("select count(*) from subscriptions where tenant_id = $1", tenant_id),
        "invoices": await db.fetchval("select count(*) from invoices where tenant_id = $1", tenant_id),
        "stripe_customers": len(customers),
    }


async def test_a_paid_signup_creates_user_tenant_and_subscription_and_the_user_verifies_to_log_in(
    api, temporal_app, temporal_client: Client, owner_db, stripe, services
):
    body = signup_body()
    response = await api.post("/v1/signup", json=body, headers={"Idempotency-Key": f"signup-{uuid.uuid4()}"})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["status"] == "active" and answer["subscription_status"] == "active"
    wid, user_id, tenant_id, sub_id = (
        answer["workflow_id"],
        answer["user_id"],
        answer["tenant_id"],
        answer["subscription_id"],
    )
    assert wid == f"signup-{user_id}" and answer["links"]["self"] == f"/v1/signup/{wid}"
    assert body["email"] not in response.text

    # everything in place: a pending user, the tenant with its owner, a paid invoice, the subscription running
    left = await _left_behind(owner_db, stripe, body, answer)
    assert left == {"users": 1, "tenants": 1, "subscriptions": 1, "invoices": 1, "stripe_customers": 1}
    assert await owner_db.fetchval("select status from users where id = $1", uuid.UUID(user_id)) == "pending"
    assert await owner_db.fetchval("select status from invoices where tenant_id = $1", uuid.UUID(tenant_id)) == "paid"
    assert (
        await owner_db.fetchval(
            "select role from memberships where tenant_id = $1 and user_id = $2",
            uuid.UUID(tenant_id),
            uuid.UUID(user_id),
        )
        == "owner"
    )
    signup = await temporal_client.get_workflow_handle(wid).describe()
    assert signup.status == WorkflowExecutionStatus.COMPLETED
    assert signup.typed_search_attributes.get(SA_TENANT_ID) == tenant_id
    assert signup.typed_search_attributes.get(SA_USER_ID) == user_id
    assert (
        await temporal_client.get_workflow_handle(subscription_workflow_id(sub_id)).describe()
    ).status == WorkflowExecutionStatus.RUNNING
    status_token = answer["status_token"]
    assert (await api.get(f"/v1/signup/{wid}", params={"status_token": status_token})).json()["status"] == "active"
    by_header = await api.get(f"/v1/signup/{wid}", headers={"Signup-Status-Token": status_token})
    assert by_header.json()["status"] == "active"
    # paid: the verification and welcome emails went out, and the receipt (the tenant has no billing email, so
    # it goes to the subscribing user); each carries the tenant's id for operators
    subjects = sorted(str(m["Subject"]) for m in await _mail_to(services, body["email"], 3, timeout=30))
    assert len(subjects) == 3, subjects
    assert any("Acme Labs" in s for s in subjects) and any(s.startswith("Confirm") for s in subjects), subjects
    assert any(s.startswith("Receipt") for s in subjects), subjects

    # the same Idempotency-Key and body: the same answer, nothing new
    again = await api.post(
        "/v1/signup", json=body, headers={"Idempotency-Key": response.request.headers["Idempotency-Key"]}
    )
    assert again.status_code == 201 and again.json()["tenant_id"] == tenant_id
    assert again.json()["status_token"] == status_token
    reused = await api.post(
        "/v1/signup",
        json={**body, "tenant_name": "Other"},
        headers={"Idempotency-Key": response.request.headers["Idempotency-Key"]},
    )
    assert_problem(reused, 422, "idempotency-key-reused")

    # no login before the email is verified; then the owner sees the tenant and the subscription
    assert (await api.post("/v1/auth/login", json={"email": body["email"], "password": PASSWORD})).status_code == 403
    token = await wait_for_token(temporal_app, user_id)
    assert (await api.post("/v1/auth/verify", json={"token": token})).status_code == 200
    login = await api.post("/v1/auth/login", json={"email": body["email"], "password": PASSWORD})
    headers = bearer(login.json()["access_token"])
    assert (await api.get(f"/v1/signup/{wid}", headers=headers)).json()["status"] == "active"
    tenant = await api.get(f"/v1/tenants/{tenant_id}", headers=headers)
    assert tenant.status_code == 200 and tenant.json()["status"] == "active" and tenant.json()["role"] == "owner"
    sub = await api.get(answer["links"]["subscription"], headers=headers)
    assert sub.status_code == 200, sub.text
    assert sub.json()["status"] == "active"

    ended = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/cancel", json={"at_period_end": False}, headers=headers
    )
    assert ended.status_code == 200, ended.text


@pytest.mark.parametrize(
    ("card", "code"),
    [("pm_card_chargeDeclined", "generic_decline"), ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
async def test_a_declined_first_payment_leaves_nothing_behind(
    api, temporal_client: Client, owner_db, stripe, services, card, code
):
    body = signup_body(payment_method=card)
    response = await api.post("/v1/signup", json=body)
    problem = assert_problem(response, 402, "payment-declined")
    assert problem["decline_code"] == code
    assert body["email"] not in response.text
    wid = problem["workflow_id"]
    user_id = wid.removeprefix("signup-")
    outcome = (await api.get(f"/v1/signup/{wid}", params={"status_token": problem["status_token"]})).json()
    assert outcome["status"] == "declined" and outcome["decline_code"] == code

    left = await _left_behind(owner_db, stripe, body, outcome)
    assert left == {"users": 0, "tenants": 0, "subscriptions": 0, "invoices": 0, "stripe_customers": 0}
    assert (
        await owner_db.fetchval(
            "select count(*) from verification_tokens where user_id = $1 and revoked_at is null and used_at is null",
            uuid.UUID(user_id),
        )
        == 0
    )
    registration = await temporal_client.get_workflow_handle(registration_workflow_id(user_id)).describe()
    assert registration.status == WorkflowExecutionStatus.CANCELED
    tenant = await temporal_client.get_workflow_handle(tenant_workflow_id(outcome["tenant_id"])).describe()
    assert tenant.status == WorkflowExecutionStatus.COMPLETED  # it had finished; the sign-up discarded the tenant
    # nothing was emailed: the children held their emails until the payment (the pivot), which never came
    emails = await temporal_client.count_workflows(
        f"WorkflowType = 'EmailDelivery' AND TenantId = '{outcome['tenant_id']}'"
    )
    assert emails.count == 0
    assert await _mail_to(services, body["email"], 1, timeout=3) == []
    # the email is free again at once
    again = await api.post("/v1/auth/register", json={"email": body["email"], "password": PASSWORD})
    assert again.status_code == 202, again.text


async def test_a_taken_email_is_409_and_creates_nothing(api, app_engine, owner_db, stripe):
    account = await insert_user(app_engine)
    body = signup_body(email=account.email.upper())
    problem = assert_problem(await api.post("/v1/signup", json=body), 409, "email-already-registered")
    assert await owner_db.fetchval("select count(*) from tenants where slug = $1", body["slug"]) == 0
    status = await api.get(f"/v1/signup/{problem['workflow_id']}", params={"status_token": problem["status_token"]})
    assert status.json()["status"] == "rejected"


async def test_a_taken_slug_is_409_and_the_new_user_is_gone(api, app_engine, owner_db):
    owner = await person(api, app_engine)
    slug = new_slug("taken")
    await active_tenant(api, owner, slug=slug)
    body = signup_body(slug=slug)
    assert_problem(await api.post("/v1/signup", json=body), 409, "slug-taken")
    assert await owner_db.fetchval("select count(*) from users where lower(email) = lower($1)", body["email"]) == 0
    assert await owner_db.fetchval("select count(*) from tenants where slug = $1", slug) == 1  # only the first


@pytest.mark.parametrize(
    "change",
    [
        {"payment_method": "card_4242"},
        {"payment_method": "pm_"},
        {"payment_method": "pm_" + "a" * 253},
        {"payment_method": "pm_visa; drop"},
        {"slug": "-bad-"},
        {"password": "short"},
        {"email": "not-an-email"},
        {"tenant_name": "bad\nname"},
        {"plan": "NOPE"},
        {"extra": 1},
    ],
)
async def test_bad_input_is_422(api, change):
    assert_problem(await api.post("/v1/signup", json=signup_body(**change)), 422, "validation-failed")


async def test_an_unknown_plan_is_422(api):
    assert_problem(await api.post("/v1/signup", json=signup_body(plan="no-such-plan")), 422, "unknown-plan")


async def test_an_unknown_signup_is_404(api):
    assert_problem(await api.get(f"/v1/signup/signup-{uuid.uuid4()}"), 404, "not-found")
    assert_problem(await api.get("/v1/signup/registration-x"), 422, "validation-failed")


async def test_only_the_one_who_signed_up_learns_how_it_went(api, app_engine):
    answer = (await api.post("/v1/signup", json=signup_body())).json()
    wid = answer["workflow_id"]
    other_token = (await api.post("/v1/signup", json=signup_body())).json()["status_token"]
    stranger = await person(api, app_engine)
    for attempt in (
        {},
        {"params": {"status_token": other_token}},
        {"params": {"status_token": "0" * 64}},
        {"headers": {"Signup-Status-Token": other_token}},
        {"headers": stranger.headers},
        {"headers": bearer("not-a-token")},
    ):
        refused = await api.get(f"/v1/signup/{wid}", **attempt)
        problem = assert_problem(refused, 404, "not-found")
        assert answer["tenant_id"] not in refused.text and answer["subscription_id"] not in refused.text
        unknown = assert_problem(await api.get(f"/v1/signup/signup-{uuid.uuid4()}", **attempt), 404, "not-found")
        assert problem["detail"] == unknown["detail"]
    assert (await api.get(f"/v1/signup/{wid}", params={"status_token": answer["status_token"]})).status_code == 200


async def _answer_lost(call, timeout: float = 0.0):
    """The saga decides, but too late for the request: its 503 is all the client sees."""
    await call
    raise Problem(WORKFLOW_ENGINE_UNAVAILABLE, "not decided in time", headers={"Retry-After": "5"})


async def test_a_503_names_the_signup_and_a_plain_retry_finds_it(api, monkeypatch):
    body = signup_body()
    with monkeypatch.context() as patched:
        patched.setattr(saga_start, "answer_within", _answer_lost)
        lost = await api.post("/v1/signup", json=body)
    problem = assert_problem(lost, 503, "workflow-engine-unavailable")
    wid = problem["workflow_id"]
    assert wid == f"signup-{problem['user_id']}" and lost.headers["Location"] == f"/v1/signup/{wid}"
    assert problem["links"] == {"self": f"/v1/signup/{wid}"}
    status = await api.get(f"/v1/signup/{wid}", params={"status_token": problem["status_token"]})
    assert status.json()["status"] == "active" and status.json()["tenant_id"] == problem["tenant_id"]

    retried = await api.post("/v1/signup", json=body)  # no Idempotency-Key, as the first time
    assert retried.status_code == 201, retried.text
    answer = retried.json()
    assert (answer["workflow_id"], answer["tenant_id"], answer["subscription_id"]) == (
        wid,
        problem["tenant_id"],
        problem["subscription_id"],
    )
    assert answer["status_token"] == problem["status_token"]

"""Every saga-starting request answers a 503 it may have started work for with the workflow id, the resource id,
`Location` and `Retry-After`; repeating the same request without an Idempotency-Key then finds that saga (same ids)
instead of starting another or answering a 409 about its own earlier attempt. Registration and paid sign-up have
their own tests (test_registration.py, test_signup.py); these are the others."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from api import saga_start
from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem
from tests.api.conftest import PASSWORD, Person, active_tenant, assert_problem, new_slug, person


@dataclass
class Request:
    url: str
    body: dict[str, object]
    id_field: str  # the resource id the answer names
    location: str  # with {id} for that id


async def _tenant(api, owner: Person) -> Request:
    return Request("/v1/tenants", {"name": "Acme", "slug": new_slug("retry")}, "tenant_id", "/v1/tenants/{id}")


async def _invitation(api, owner: Person) -> Request:
    tid = await active_tenant(api, owner)
    url = f"/v1/tenants/{tid}/invitations"
    return Request(
        url, {"email": f"ivy-{uuid.uuid4().hex[:8]}@example.com", "role": "member"}, "invitation_id", url + "/{id}"
    )


async def _subscription(api, owner: Person) -> Request:
    tid = await active_tenant(api, owner)
    url = f"/v1/tenants/{tid}/subscriptions"
    return Request(url, {"plan": "dev-minutely", "payment_method": "pm_card_visa"}, "subscription_id", url + "/{id}")


async def _email_change(api, owner: Person) -> Request:
    body = {"new_email": f"moved-{uuid.uuid4().hex[:8]}@example.com", "current_password": PASSWORD}
    return Request("/v1/me/email", body, "change_id", "")


REQUESTS: dict[str, Callable[..., Awaitable[Request]]] = {
    "tenant": _tenant,
    "invitation": _invitation,
    "subscription": _subscription,
    "email change": _email_change,
}


@pytest.mark.parametrize("kind", list(REQUESTS))
async def test_a_503_names_the_saga_and_a_plain_retry_finds_it(api, app_engine, monkeypatch, kind):
    owner = await person(api, app_engine)
    request = await REQUESTS[kind](api, owner)
    real_start = saga_start._start_saga

    async def started_but_unconfirmed(*args, **kwargs):
        await real_start(*args, **kwargs)  # the saga really starts ...
        raise Problem(WORKFLOW_ENGINE_UNAVAILABLE, "not confirmed in time", headers={"Retry-After": "5"})  # ... unseen

    with monkeypatch.context() as patched:
        patched.setattr(saga_start, "_start_saga", started_but_unconfirmed)
        lost = await api.post(request.url, json=request.body, headers=owner.headers)
    problem = assert_problem(lost, 503, "workflow-engine-unavailable")
    resource_id, workflow_id = problem[request.id_field], problem["workflow_id"]
    assert lost.headers["Retry-After"] == "5" and lost.headers["Location"] == problem["links"]["self"]
    if request.location:
        assert lost.headers["Location"] == request.location.format(id=resource_id)

    retried = await api.post(request.url, json=request.body, headers=owner.headers)  # no Idempotency-Key
    assert retried.status_code == 202, retried.text
    assert retried.json()[request.id_field] == resource_id
    assert retried.json().get("workflow_id", workflow_id) == workflow_id
    assert retried.headers["Location"] == lost.headers["Location"]

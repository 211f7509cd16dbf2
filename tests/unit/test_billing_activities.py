"""The Stripe activities against the Stripe sandbox (in-process), run through Temporal's ActivityEnvironment."""

from __future__ import annotations

import uuid

import pytest
import stripe
from temporalio.exceptions import ApplicationError

from activities.billing import BillingActivities
from models.billing_contracts import CreateStripeCustomer, DeleteStripeCustomer
from models.errors import STRIPE_PERMANENT_ERROR
from prognet.settings import Settings
from prognet_dev.stripe_sandbox import StripeSandbox
from tests.unit.conftest import STRIPE_KEY


@pytest.fixture(autouse=True)
def _no_faults(sandbox: StripeSandbox):
    sandbox.clear_faults()
    yield
    sandbox.clear_faults()


def _create(tenant_id: uuid.UUID | None = None, **kwargs) -> CreateStripeCustomer:
    tenant_id = tenant_id or uuid.uuid4()
    defaults = dict(
        tenant_id=tenant_id,
        name="Acme Ltd",
        email="billing@acme.test",
        idempotency_key=f"tenant-{tenant_id}:create_stripe_customer",
    )
    return CreateStripeCustomer(**{**defaults, **kwargs})


def _of_tenant(sandbox: StripeSandbox, tenant_id: uuid.UUID) -> list[dict]:
    return [c for c in sandbox.customers() if c["metadata"].get("tenant_id") == str(tenant_id)]


async def test_create_makes_a_customer_carrying_the_tenant_id(sandbox, billing, env):
    req = _create()
    result = await env.run(billing.create_stripe_customer, req)
    assert result.customer_id.startswith("cus_")
    [customer] = _of_tenant(sandbox, req.tenant_id)
    assert customer["id"] == result.customer_id
    assert (customer["name"], customer["email"], customer["livemode"]) == ("Acme Ltd", "billing@acme.test", False)
    # and the SDK reads it back the same way
    fetched = await stripe.StripeClient(
        STRIPE_KEY, base_addresses={"api": sandbox.api_base}
    ).v1.customers.retrieve_async(result.customer_id)
    assert fetched.metadata["tenant_id"] == str(req.tenant_id)


async def test_a_retried_create_with_the_same_key_returns_the_same_customer(sandbox, billing, env):
    req = _create(email=None)
    first = await env.run(billing.create_stripe_customer, req)
    second = await env.run(billing.create_stripe_customer, req)
    assert first == second
    assert len(_of_tenant(sandbox, req.tenant_id)) == 1
    posts = sandbox.requests(path_prefix="/v1/customers", method="POST")
    assert [r["replayed"] for r in posts if r["idempotency_key"] == req.idempotency_key] == [False, True]


async def test_a_lost_response_is_retried_into_the_same_customer(sandbox, billing, env):
    """The customer is created but the answer never arrives (500 after the fact): the retry replays it."""
    req = _create()
    sandbox.inject_fault(500, path_prefix="/v1/customers", method="POST", phase="after")
    with pytest.raises(stripe.APIError):
        await env.run(billing.create_stripe_customer, req)
    assert len(_of_tenant(sandbox, req.tenant_id)) == 1
    result = await env.run(billing.create_stripe_customer, req)
    assert [c["id"] for c in _of_tenant(sandbox, req.tenant_id)] == [result.customer_id]


async def test_delete_twice_is_fine(sandbox, billing, env):
    req = _create()
    customer = await env.run(billing.create_stripe_customer, req)
    delete = DeleteStripeCustomer(customer_id=customer.customer_id, tenant_id=req.tenant_id)
    await env.run(billing.delete_stripe_customer, delete)
    await env.run(billing.delete_stripe_customer, delete)
    assert _of_tenant(sandbox, req.tenant_id) == []
    deletes = sandbox.requests(path_prefix=f"/v1/customers/{customer.customer_id}", method="DELETE")
    assert [r["status"] for r in deletes] == [200, 404]


async def test_delete_of_a_customer_that_never_existed_is_fine(billing, env):
    await env.run(
        billing.delete_stripe_customer, DeleteStripeCustomer(customer_id="cus_neverexisted1", tenant_id=uuid.uuid4())
    )


async def test_delete_without_an_id_finds_the_tenants_customer(sandbox, billing, env):
    req = _create()
    other = await env.run(billing.create_stripe_customer, _create())
    await env.run(billing.create_stripe_customer, req)
    await env.run(
        billing.delete_stripe_customer,
        DeleteStripeCustomer(customer_id=None, tenant_id=req.tenant_id, idempotency_key=req.idempotency_key),
    )
    assert _of_tenant(sandbox, req.tenant_id) == []
    assert other.customer_id in {c["id"] for c in sandbox.customers()}, "another tenant's customer is untouched"


async def test_invalid_request_is_permanent_and_names_the_code_not_the_email(billing, env):
    with pytest.raises(ApplicationError) as info:
        await env.run(billing.create_stripe_customer, _create(email="not-an-email"))
    err = info.value
    assert err.type == STRIPE_PERMANENT_ERROR and err.non_retryable
    assert "email_invalid" in err.message and "InvalidRequestError" in err.message
    assert "not-an-email" not in err.message
    assert err.details[0]["http_status"] == 400


async def test_injected_decline_and_idempotency_misuse_are_permanent(sandbox, billing, env):
    sandbox.inject_fault(
        402, path_prefix="/v1/customers", method="POST", code="card_declined", decline_code="generic_decline"
    )
    with pytest.raises(ApplicationError) as info:
        await env.run(billing.create_stripe_customer, _create())
    assert info.value.non_retryable and "card_declined" in info.value.message

    req = _create()
    await env.run(billing.create_stripe_customer, req)
    with pytest.raises(ApplicationError) as info:  # same key, other parameters
        await env.run(billing.create_stripe_customer, req.model_copy(update={"name": "Other name"}))
    assert info.value.type == STRIPE_PERMANENT_ERROR and "IdempotencyError" in info.value.message


async def test_a_bad_key_is_permanent_and_never_shown(sandbox, env):
    secret = "sk_live_do_not_leak_1234567890"
    billing = BillingActivities(Settings(stripe_api_base=sandbox.api_base, stripe_secret_key=secret))
    with pytest.raises(ApplicationError) as info:
        await env.run(billing.create_stripe_customer, _create())
    assert info.value.type == STRIPE_PERMANENT_ERROR and info.value.non_retryable
    assert "AuthenticationError" in info.value.message
    assert "7890" not in info.value.message and "do_not_leak" not in str(info.value.details)


@pytest.mark.parametrize(("status", "error"), [(500, stripe.APIError), (429, stripe.RateLimitError)])
async def test_server_errors_and_rate_limits_are_left_to_temporal_to_retry(sandbox, billing, env, status, error):
    req = _create()
    sandbox.inject_fault(status, path_prefix="/v1/customers", method="POST")
    with pytest.raises(error) as info:
        await env.run(billing.create_stripe_customer, req)
    assert not isinstance(info.value, ApplicationError)
    assert _of_tenant(sandbox, req.tenant_id) == []  # failed before anything happened
    result = await env.run(billing.create_stripe_customer, req)  # Temporal's next attempt
    assert [c["id"] for c in _of_tenant(sandbox, req.tenant_id)] == [result.customer_id]


async def test_delete_failing_with_500_is_retryable(sandbox, billing, env):
    req = _create()
    customer = await env.run(billing.create_stripe_customer, req)
    sandbox.inject_fault(500, method="DELETE")
    delete = DeleteStripeCustomer(customer_id=customer.customer_id, tenant_id=req.tenant_id)
    with pytest.raises(stripe.APIError):
        await env.run(billing.delete_stripe_customer, delete)
    assert len(_of_tenant(sandbox, req.tenant_id)) == 1
    await env.run(billing.delete_stripe_customer, delete)
    assert _of_tenant(sandbox, req.tenant_id) == []


async def test_unreachable_stripe_is_a_retryable_connection_error(env):
    from prognet_dev import free_port

    billing = BillingActivities(
        Settings(stripe_api_base=f"http://127.0.0.1:{free_port()}", stripe_secret_key=STRIPE_KEY)
    )
    with pytest.raises(stripe.APIConnectionError):
        await env.run(billing.create_stripe_customer, _create())

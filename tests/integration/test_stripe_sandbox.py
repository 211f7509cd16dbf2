"""The Stripe sandbox through the real `stripe` SDK: customers, Idempotency-Key replay, API-key check, Stripe's
error envelopes, fault injection (in-process and over the admin API), persistence across restarts, its place in
the embedded stack and `prognet stripe-sandbox`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import stripe

from prognet.settings import DEV_STRIPE_SECRET_KEY
from prognet_dev import EmbeddedStack, SandboxAdmin, StripeSandbox, free_port, stack_settings

KEY = "sk_test_sandbox_it"


def client_for(api_base: str, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": api_base}, max_network_retries=0)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[StripeSandbox]:
    async with StripeSandbox(state_file=tmp_path / "stripe.json", port=0) as sb:
        yield sb


@pytest.fixture
def sdk(sandbox: StripeSandbox) -> stripe.StripeClient:
    return client_for(sandbox.api_base)


async def test_customer_lifecycle(sdk: stripe.StripeClient) -> None:
    created = await sdk.v1.customers.create_async(
        params={"email": "ops@acme.test", "name": "Acme", "metadata": {"tenant_id": "t-1", "plan": "pro"}}
    )
    assert created.id.startswith("cus_") and created.object == "customer"
    assert (created.email, created.name, created.livemode) == ("ops@acme.test", "Acme", False)
    assert created.metadata.to_dict() == {"tenant_id": "t-1", "plan": "pro"}
    assert isinstance(created.created, int) and created.created > 0

    fetched = await sdk.v1.customers.retrieve_async(created.id)
    assert fetched.to_dict() == created.to_dict()

    updated = await sdk.v1.customers.update_async(created.id, params={"metadata": {"plan": ""}, "name": "Acme Ltd"})
    assert updated.metadata.to_dict() == {"tenant_id": "t-1"} and updated.name == "Acme Ltd"

    listed = await sdk.v1.customers.list_async(params={"limit": 100})
    assert listed.object == "list" and listed.url == "/v1/customers" and listed.has_more is False
    assert [c.id for c in listed.data] == [created.id]

    deleted = await sdk.v1.customers.delete_async(created.id)
    assert deleted.to_dict() == {"id": created.id, "object": "customer", "deleted": True}
    assert (await sdk.v1.customers.retrieve_async(created.id)).deleted is True  # Stripe answers a tombstone
    assert (await sdk.v1.customers.list_async()).data == []
    with pytest.raises(stripe.InvalidRequestError) as info:  # deleting twice: 404
        await sdk.v1.customers.delete_async(created.id)
    assert info.value.code == "resource_missing" and info.value.http_status == 404


async def test_list_pages_newest_first(sdk: stripe.StripeClient) -> None:
    ids = [(await sdk.v1.customers.create_async(params={"name": f"c{i}"})).id for i in range(5)]
    first = await sdk.v1.customers.list_async(params={"limit": 2})
    assert [c.id for c in first.data] == ids[::-1][:2] and first.has_more is True
    rest = await sdk.v1.customers.list_async(params={"limit": 10, "starting_after": first.data[-1].id})
    assert [c.id for c in rest.data] == ids[::-1][2:] and rest.has_more is False
    every = [c.id async for c in (await sdk.v1.customers.list_async(params={"limit": 2})).auto_paging_iter()]
    assert every == ids[::-1]


async def test_idempotent_replay(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    params = {"email": "a@acme.test", "name": "A", "metadata": {"tenant_id": "t-2"}}
    first = await sdk.v1.customers.create_async(params=params, options={"idempotency_key": "key-1"})
    again = await sdk.v1.customers.create_async(params=dict(params), options={"idempotency_key": "key-1"})
    assert again.id == first.id
    assert again.last_response.headers["idempotent-replayed"] == "true"
    assert again.last_response.headers["original-request"] == first.last_response.request_id
    assert len(sandbox.customers()) == 1

    with pytest.raises(stripe.IdempotencyError) as info:
        await sdk.v1.customers.create_async(params={**params, "name": "B"}, options={"idempotency_key": "key-1"})
    assert info.value.http_status == 400 and "same parameters" in str(info.value)
    assert len(sandbox.customers()) == 1

    # keys are scoped per API key: another key's "key-1" is a new request
    other = await client_for(sandbox.api_base, "sk_test_other_account").v1.customers.create_async(
        params=params, options={"idempotency_key": "key-1"}
    )
    assert other.id != first.id
    with pytest.raises(stripe.InvalidRequestError):  # and objects are too
        await client_for(sandbox.api_base, "sk_test_other_account").v1.customers.retrieve_async(first.id)


async def test_api_key_check(sandbox: StripeSandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.api_base) as http:
        response = await http.get("/v1/customers")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert "did not provide an API key" in response.json()["error"]["message"]
        ok = await http.get("/v1/customers", auth=(KEY, ""))  # curl -u sk_test_…:
        assert ok.status_code == 200 and ok.json()["object"] == "list"
    for key in ("sk_live_0123456789abcdef", "pk_test_0123456789abcdef"):
        with pytest.raises(stripe.AuthenticationError) as info:
            await client_for(sandbox.api_base, key).v1.customers.list_async()
        assert info.value.http_status == 401 and "0123456789" not in str(info.value)


async def test_stripe_error_envelopes(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.customers.retrieve_async("cus_doesnotexist00")
    assert (info.value.code, info.value.http_status, info.value.param) == ("resource_missing", 404, "id")
    assert info.value.error.type == "invalid_request_error"
    assert "No such customer: 'cus_doesnotexist00'" in str(info.value)

    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.customers.create_async(params={"colour": "blue"})  # type: ignore[typeddict-unknown-key]
    assert (info.value.code, info.value.param) == ("parameter_unknown", "colour")

    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.customers.create_async(params={"email": "nope"})
    assert info.value.code == "email_invalid"

    async with httpx.AsyncClient(base_url=sandbox.api_base, auth=(KEY, "")) as http:
        response = await http.get("/v1/payouts")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["request-id"].startswith("req_")


async def test_injected_faults(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    sandbox.inject_fault(500, count=2, path_prefix="/v1/customers", method="POST")
    for _ in range(2):
        with pytest.raises(stripe.APIError) as info:
            await sdk.v1.customers.create_async(params={"name": "x"}, options={"idempotency_key": "k-fault"})
        assert info.value.http_status == 500 and info.value.error.type == "api_error"
    assert (await sdk.v1.customers.list_async()).data == []  # GETs were not matched, nothing was created
    created = await sdk.v1.customers.create_async(params={"name": "x"}, options={"idempotency_key": "k-fault"})
    assert created.last_response.headers.get("idempotent-replayed") is None  # injected 500s are not replayed

    sandbox.inject_fault(429, path_prefix="/v1/customers")
    with pytest.raises(stripe.RateLimitError) as info:
        await sdk.v1.customers.retrieve_async(created.id)
    assert info.value.http_status == 429 and (info.value.error.type, info.value.error.code) == (
        "rate_limit_error",
        "rate_limit",
    )
    assert (await sdk.v1.customers.retrieve_async(created.id)).id == created.id  # count used up

    sandbox.inject_fault(400, method="POST")
    with pytest.raises(stripe.InvalidRequestError):
        await sdk.v1.customers.create_async(params={"name": "y"})
    sandbox.inject_fault(402, code="card_declined", decline_code="insufficient_funds")
    with pytest.raises(stripe.CardError) as card:
        await sdk.v1.customers.create_async(params={"name": "y"})
    assert card.value.code == "card_declined" and card.value.error.decline_code == "insufficient_funds"

    sandbox.inject_fault(500, count=5)
    assert len(sandbox.faults()) == 1
    sandbox.clear_faults()
    assert (await sdk.v1.customers.list_async()).data[0].id == created.id

    statuses = [(r["method"], r["status"], r["idempotency_key"]) for r in sandbox.requests(path_prefix="/v1/customers")]
    assert statuses[:3] == [("POST", 500, "k-fault"), ("POST", 500, "k-fault"), ("GET", 200, None)]


async def test_admin_api_over_http(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    async with SandboxAdmin(sandbox.api_base) as admin:
        fault = await admin.inject_fault(503, count=1, path_prefix="/v1/customers", method="GET")
        assert fault["status"] == 503 and fault["count"] == 1
        with pytest.raises(stripe.APIError):
            await sdk.v1.customers.list_async()
        created = await sdk.v1.customers.create_async(
            params={"name": "z", "metadata": {"tenant_id": "t-z"}}, options={"idempotency_key": "admin-k"}
        )
        assert [c["id"] for c in await admin.customers()] == [created.id]
        posts = await admin.requests(path_prefix="/v1/customers", method="POST")
        assert [(p["idempotency_key"], p["status"]) for p in posts] == [("admin-k", 200)]
        await admin.inject_fault(500, count=3)
        await admin.clear_faults()
        assert (await sdk.v1.customers.list_async()).data[0].id == created.id
        async with httpx.AsyncClient(base_url=sandbox.api_base) as http:
            bad = await http.post("/_sandbox/faults", json={"status": 418})
            assert bad.status_code == 400


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "stripe" / "state.json"
    async with StripeSandbox(state_file=state, port=0) as first:
        sdk = client_for(first.api_base)
        kept = await sdk.v1.customers.create_async(params={"name": "kept"}, options={"idempotency_key": "persist-k"})
        gone = await sdk.v1.customers.create_async(params={"name": "gone"})
        await sdk.v1.customers.delete_async(gone.id)
    assert json.loads(state.read_text())["version"] == 1
    assert not [p for p in state.parent.iterdir() if p.name != "state.json"], "no temp files left behind"

    async with StripeSandbox(state_file=state, port=0) as second:
        sdk = client_for(second.api_base)
        assert (await sdk.v1.customers.retrieve_async(kept.id)).name == "kept"
        assert (await sdk.v1.customers.retrieve_async(gone.id)).deleted is True
        assert [c.id for c in (await sdk.v1.customers.list_async()).data] == [kept.id]
        replay = await sdk.v1.customers.create_async(params={"name": "kept"}, options={"idempotency_key": "persist-k"})
        assert replay.id == kept.id and replay.last_response.headers["idempotent-replayed"] == "true"


async def test_in_memory_sandbox_keeps_nothing(tmp_path: Path) -> None:
    async with StripeSandbox(port=0) as sb:
        await client_for(sb.api_base).v1.customers.create_async(params={"name": "m"})
    async with StripeSandbox(port=0) as sb:
        assert sb.customers() == []


async def test_busy_port_is_an_os_error() -> None:
    async with StripeSandbox(port=0) as sb:
        with pytest.raises(OSError):
            await StripeSandbox(port=sb.port).start()


# --- in the embedded stack ----------------------------------------------------------------------------------

ONLY_STRIPE = dict(services={"stripe"}, run_migrations=False, log=lambda name, line: None)


async def test_the_stack_runs_the_sandbox_and_points_the_app_at_it(tmp_path: Path) -> None:
    stack = EmbeddedStack(stack_settings(tmp_path / "data"), **ONLY_STRIPE)
    async with stack:
        assert stack.stripe is not None and stack.stripe_api_base == stack.stripe.api_base
        env = stack.service_env()
        assert env["STRIPE_API_BASE"] == stack.stripe_api_base and env["STRIPE_SECRET_KEY"] == DEV_STRIPE_SECRET_KEY
        settings = stack.settings()
        assert settings.stripe_base == stack.stripe_api_base
        assert settings.stripe_secret_key is not None
        sdk = client_for(settings.stripe_base, settings.stripe_secret_key.get_secret_value())
        created = await sdk.v1.customers.create_async(params={"name": "via stack"})
        assert (
            "Stripe sandbox",
            stack.stripe_api_base,
            str(tmp_path / "data" / "stripe" / "state.json"),
        ) in stack.rows()
        assert stack.processes() == []  # in-process, like the SMTP sink
    async with EmbeddedStack(stack_settings(tmp_path / "data"), **ONLY_STRIPE) as again:  # `prognet dev` run twice
        assert (
            await client_for(again.stripe_api_base, DEV_STRIPE_SECRET_KEY).v1.customers.retrieve_async(created.id)
        ).name == "via stack"


async def test_an_external_stripe_is_not_started(tmp_path: Path) -> None:
    stack = EmbeddedStack(stack_settings(tmp_path / "data", stripe_api_base="https://api.stripe.com"), **ONLY_STRIPE)
    assert stack.stripe is None and stack.components == []
    assert stack.service_env()["STRIPE_API_BASE"] == "https://api.stripe.com"
    assert "STRIPE_SECRET_KEY" not in stack.service_env()  # a real key stays where it came from
    assert ("Stripe", "https://api.stripe.com (external)", "") in stack.rows()
    without = EmbeddedStack(stack_settings(tmp_path / "data2"), **(ONLY_STRIPE | {"services": set()}))
    assert without.stripe is None and "STRIPE_API_BASE" not in without.service_env()


async def test_prognet_stripe_sandbox_command(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PROGNET_DATA_DIR": str(tmp_path / "data"), "STRIPE_SANDBOX_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prognet.cli", "stripe-sandbox"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        api_base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with httpx.AsyncClient() as http:
                    if (await http.get(f"{api_base}/healthz")).status_code == 200:
                        break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        created = await client_for(api_base).v1.customers.create_async(params={"name": "standalone"})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert api_base in out
    saved = json.loads((tmp_path / "data" / "stripe" / "state.json").read_text())
    assert created.id in saved["objects"]["customer"]

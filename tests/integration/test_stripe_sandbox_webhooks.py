"""The Stripe sandbox's webhooks: every event POSTed to a local receiver, signed exactly as Stripe signs
(`stripe.Webhook.construct_event` verifies it, 300 s tolerance), retried with backoff on non-2xx, delivered twice in
duplicate mode, held and released newest first in reverse mode; forged, tampered and stale signatures fail
verification."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import stripe

from prognet.settings import DEV_STRIPE_WEBHOOK_SECRET
from prognet_dev import EmbeddedStack, SandboxAdmin, StripeSandbox, stack_settings
from prognet_dev.stripe_sandbox import signature_header

KEY = "sk_test_sandbox_webhooks"
SECRET = "whsec_test_0123456789abcdefghijklmnopqrstuv"


@dataclass
class Received:
    payload: bytes
    headers: dict[str, str]

    @property
    def event(self) -> dict:
        return json.loads(self.payload)


@dataclass
class Receiver:
    """A tiny HTTP endpoint: records every POST, answers the next queued statuses (then 200)."""

    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/webhooks/stripe"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(body, headers))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".encode())
            await writer.drain()
        finally:
            writer.close()

    def events(self, secret: str = SECRET) -> list[stripe.Event]:
        """Every received delivery, verified as the API verifies it."""
        return [
            stripe.Webhook.construct_event(r.payload.decode(), r.headers["stripe-signature"], secret, tolerance=300)
            for r in self.received
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sandbox(receiver: Receiver) -> AsyncIterator[StripeSandbox]:
    async with StripeSandbox(port=0, webhook_url=receiver.url, webhook_secret=SECRET) as sb:
        sb.configure_webhooks(retry_delays=[0.05, 0.1, 0.2])
        yield sb


@pytest.fixture
def sdk(sandbox: StripeSandbox) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": sandbox.api_base}, max_network_retries=0)


async def pay(sdk: stripe.StripeClient, payment_method: str = "pm_card_visa", amount: int = 2000):
    return await sdk.v1.payment_intents.create_async(
        params={"amount": amount, "currency": "usd", "payment_method": payment_method, "confirm": True}
    )


async def test_events_are_delivered_signed_as_stripe_signs(
    sandbox: StripeSandbox, sdk: stripe.StripeClient, receiver: Receiver
) -> None:
    pi = await pay(sdk)
    with pytest.raises(stripe.CardError):
        await pay(sdk, "pm_card_chargeDeclinedInsufficientFunds")
    await sdk.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 700})
    await sandbox.wait_for_webhooks()

    events = receiver.events()  # raises SignatureVerificationError if any signature were wrong
    assert [e.type for e in events] == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "payment_intent.created",
        "charge.failed",
        "payment_intent.payment_failed",
        "refund.created",
        "charge.refunded",
    ]
    succeeded = events[2]
    assert succeeded.data.object.id == pi.id and succeeded.data.object.status == "succeeded"
    assert succeeded.livemode is False and succeeded.id.startswith("evt_")
    failed = events[5]
    assert failed.data.object.last_payment_error.decline_code == "insufficient_funds"
    refunded = events[7]
    assert refunded.data.object.amount_refunded == 700 and refunded.data.object.refunded is False

    first = receiver.received[0]
    assert first.headers["content-type"].startswith("application/json")
    assert first.headers["user-agent"].startswith("Stripe/1.0")
    sig = dict(part.split("=", 1) for part in first.headers["stripe-signature"].split(","))
    assert abs(int(sig["t"]) - time.time()) < 60 and len(sig["v1"]) == 64
    # the recorded events are the delivered ones, and now count as delivered
    listed = await sdk.v1.events.list_async(params={"limit": 100, "delivery_success": True})
    assert {e.id for e in listed.data} == {e.id for e in events}
    assert all(e.pending_webhooks == 0 for e in listed.data)


async def test_forged_tampered_and_stale_signatures_fail(
    sandbox: StripeSandbox, sdk: stripe.StripeClient, receiver: Receiver
) -> None:
    await pay(sdk)
    await sandbox.wait_for_webhooks()
    delivery = receiver.received[-1]
    payload, header = delivery.payload.decode(), delivery.headers["stripe-signature"]
    assert stripe.Webhook.construct_event(payload, header, SECRET).type == "payment_intent.succeeded"

    with pytest.raises(stripe.SignatureVerificationError):  # signed with another secret
        stripe.Webhook.construct_event(payload, signature_header(payload, "whsec_forged"), SECRET)
    with pytest.raises(stripe.SignatureVerificationError):  # a genuine header on a changed body
        stripe.Webhook.construct_event(payload.replace('"succeeded"', '"canceled"'), header, SECRET)
    with pytest.raises(stripe.SignatureVerificationError):  # genuine but older than the tolerance
        stale = signature_header(payload, SECRET, timestamp=int(time.time()) - 600)
        stripe.Webhook.construct_event(payload, stale, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, "garbage", SECRET)


async def test_duplicate_mode_delivers_every_event_twice(
    sandbox: StripeSandbox, sdk: stripe.StripeClient, receiver: Receiver
) -> None:
    sandbox.configure_webhooks(mode="duplicate", enabled_events=["payment_intent.*"])
    await pay(sdk)
    await sandbox.wait_for_webhooks()
    events = receiver.events()
    assert [e.type for e in events] == [
        "payment_intent.created",
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.succeeded",
    ]
    assert events[0].id == events[1].id and events[2].id == events[3].id
    copies = [d["copy"] for d in sandbox.webhook_deliveries()]
    assert copies == [1, 2, 1, 2]


async def test_hold_and_reverse_releases_newest_first(
    sandbox: StripeSandbox, sdk: stripe.StripeClient, receiver: Receiver
) -> None:
    async with SandboxAdmin(sandbox.api_base) as admin:  # over the admin API, as a test of a separate stack would
        status = await admin.configure_webhooks(
            mode="reverse", hold=True, enabled_events=["payment_intent.succeeded", "charge.refunded"]
        )
        assert (status["mode"], status["hold"]) == ("reverse", True)
        pi = await pay(sdk)
        await sdk.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 500})
        await sdk.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 600})
        await admin.wait_for_webhooks()
        assert receiver.received == [] and (await admin.webhook_status())["held"] == 3

        assert await admin.flush_webhooks() == 3
        await admin.wait_for_webhooks()
        events = receiver.events()
        assert [e.type for e in events] == ["charge.refunded", "charge.refunded", "payment_intent.succeeded"]
        assert [e.data.object.amount_refunded for e in events[:2]] == [1100, 500]

        # hold off again: events flow as they happen; switching hold off releases what was held
        await admin.configure_webhooks(mode="normal", hold=True)
        await sdk.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 100})
        await admin.configure_webhooks(hold=False)
        await admin.wait_for_webhooks()
        assert receiver.events()[-1].data.object.amount_refunded == 1200
        assert len(await admin.webhook_deliveries()) == 4


async def test_non_2xx_is_retried_with_backoff(
    sandbox: StripeSandbox, sdk: stripe.StripeClient, receiver: Receiver
) -> None:
    sandbox.configure_webhooks(enabled_events=["payment_intent.succeeded"])
    receiver.statuses = [500, 503]
    pi = await pay(sdk)
    await sandbox.wait_for_webhooks()
    attempts = sandbox.webhook_deliveries()
    assert [(d["attempt"], d["status"]) for d in attempts] == [(1, 500), (2, 503), (3, 200)]
    assert attempts[1]["time"] - attempts[0]["time"] >= 0.05
    assert attempts[2]["time"] - attempts[1]["time"] >= 0.1
    assert [e.data.object.id for e in receiver.events()] == [pi.id] * 3
    event = (await sdk.v1.events.list_async(params={"type": "payment_intent.succeeded"})).data[0]
    assert event.pending_webhooks == 0

    # an endpoint that never answers 2xx: a few attempts, then given up (and still pending)
    receiver.statuses = [500] * 4
    await pay(sdk)
    await sandbox.wait_for_webhooks()
    assert len(receiver.received) == 3 + 4  # 1 attempt + 3 retries
    undelivered = await sdk.v1.events.list_async(params={"type": "payment_intent.succeeded", "delivery_success": False})
    assert len(undelivered.data) == 1 and undelivered.data[0].pending_webhooks == 1

    # and resending it (as `stripe events resend`) delivers it
    sandbox.resend_event(undelivered.data[0].id)
    await sandbox.wait_for_webhooks()
    assert receiver.received[-1].headers["stripe-signature"] and len(receiver.received) == 8


async def test_unreachable_endpoint_and_rolled_secrets(receiver: Receiver) -> None:
    async with StripeSandbox(port=0, webhook_url="http://127.0.0.1:9/nowhere", webhook_secret=SECRET) as sandbox:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": sandbox.api_base}, max_network_retries=0)
        sandbox.configure_webhooks(retry_delays=[0.01], enabled_events=["payment_intent.succeeded"])
        await pay(sdk)  # the API answers although the endpoint is down
        await sandbox.wait_for_webhooks()
        deliveries = sandbox.webhook_deliveries()
        assert len(deliveries) == 2 and all(d["status"] is None and d["error"] for d in deliveries)

        # while a secret is rolled, every delivery carries a v1 per secret; either verifies
        sandbox.configure_webhooks(url=receiver.url, secret=["whsec_new_secret", SECRET])
        await pay(sdk)
        await sandbox.wait_for_webhooks()
        header = receiver.received[-1].headers["stripe-signature"]
        assert header.count("v1=") == 2
        assert receiver.events("whsec_new_secret")[-1].type == receiver.events(SECRET)[-1].type

        sandbox.configure_webhooks(url=None)  # no endpoint: events are only recorded
        await pay(sdk)
        await sandbox.wait_for_webhooks()
        assert len(receiver.received) == 1 and len(sandbox.events("payment_intent.succeeded")) == 3


async def test_admin_api_validates_the_switches(sandbox: StripeSandbox) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=sandbox.api_base) as http:
        bad = await http.post("/_sandbox/webhooks", json={"mode": "sideways"})
        assert bad.status_code == 400 and "mode" in bad.json()["error"]
        unknown = await http.post("/_sandbox/webhooks", json={"colour": "red"})
        assert unknown.status_code == 400
        status = (await http.get("/_sandbox/webhooks")).json()
        assert status["mode"] == "normal" and status["secrets"] == [SECRET] and status["pending"] == 0


async def test_the_dev_stack_points_webhooks_at_the_api_which_has_the_route(tmp_path) -> None:
    from api.routers.stripe_webhooks import router

    # the stack sends the sandbox's events to the API's route, which exists: they are answered, not retried
    assert any(getattr(r, "path", None) == "/v1/webhooks/stripe" and "POST" in r.methods for r in router.routes)

    stack = EmbeddedStack(stack_settings(tmp_path / "data", api_port=18765), services={"stripe"}, app=True)
    assert stack.stripe is not None
    assert stack.stripe_webhook_url == "http://127.0.0.1:18765/v1/webhooks/stripe"
    assert stack.stripe.sandbox.webhook_url == stack.stripe_webhook_url
    assert stack.stripe.sandbox.webhook_secret == DEV_STRIPE_WEBHOOK_SECRET
    assert stack.service_env()["STRIPE_WEBHOOK_SECRET"] == DEV_STRIPE_WEBHOOK_SECRET
    assert stack.settings().stripe_webhook_secret.get_secret_value() == DEV_STRIPE_WEBHOOK_SECRET

    without_api = EmbeddedStack(stack_settings(tmp_path / "data0"), services={"stripe"})
    assert without_api.stripe_webhook_url is None  # no endpoint to answer them: events are only recorded

    custom = EmbeddedStack(
        stack_settings(
            tmp_path / "data2", stripe_webhook_url="http://127.0.0.1:1/hook", stripe_webhook_secret="whsec_custom"
        ),
        services={"stripe"},
    )
    assert custom.stripe is not None and custom.stripe.sandbox.webhook_url == "http://127.0.0.1:1/hook"
    assert custom.stripe.sandbox.webhook_secret == "whsec_custom"
    assert custom.service_env()["STRIPE_WEBHOOK_SECRET"] == "whsec_custom"

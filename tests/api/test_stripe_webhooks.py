"""`POST /v1/webhooks/stripe` on real Redis and a real Temporal dev server.

The billing cycle is stood in for by `WebhookProbe`, a test-only workflow on its own task queue that records
the `payment_outcome` signals it gets: the endpoint's job ends at the signal, and this keeps the tests
independent of the billing activities. Events are signed as Stripe signs them (the sandbox's helper), and the
last test has the Stripe sandbox itself deliver to the API over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import stripe
import uvicorn
from pydantic import ValidationError
from redis.asyncio import Redis
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.billing import BillingActivities
from api.app import create_app
from api.routers.stripe_webhooks import DEDUPE_TTL_SECONDS, dedupe_key, route_of
from models.billing_contracts import CreateStripeCustomer
from models.billing_cycle_contracts import CreatePaymentIntent, PaymentOutcome
from models.names import CHARGING_TTL_SECONDS, SIGNAL_PAYMENT_OUTCOME, STRIPE_WEBHOOK_EVENTS, charging_key
from prognet.settings import DEV_STRIPE_WEBHOOK_SECRET, Settings
from prognet_dev import EmbeddedStack, StripeSandbox, free_port
from prognet_dev.stripe_sandbox import signature_header
from tests.api.conftest import ARGON2, assert_problem

CURRENT = "whsec_test_current_" + "c" * 24
PREVIOUS = "whsec_test_previous_" + "p" * 24
URL = "/v1/webhooks/stripe"
QUERY_OUTCOMES = "outcomes"


@workflow.defn(name="WebhookProbe", sandboxed=False)
class WebhookProbe:
    """Runs until terminated; keeps every payment outcome signalled to it, in arrival order."""

    def __init__(self) -> None:
        self.outcomes: list[PaymentOutcome] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=SIGNAL_PAYMENT_OUTCOME)
    def payment_outcome(self, outcome: PaymentOutcome) -> None:
        self.outcomes.append(outcome)

    @workflow.query(name=QUERY_OUTCOMES)
    def received(self) -> list[PaymentOutcome]:
        return self.outcomes


# --- fixtures ---------------------------------------------------------------------------------------------------


def hook_settings(services: EmbeddedStack, data_dir: Path, **overrides: object) -> Settings:
    values: dict = dict(
        environment="development",
        data_dir=data_dir,
        secret_key="test-secret-" + "k" * 40,
        database_url=services.database_url,
        redis_url=services.redis_url,
        temporal_address=services.temporal_address,
        stripe_webhook_secret=CURRENT,
        log_level="WARNING",
        **ARGON2,
    )
    return Settings(**{**values, **overrides})


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client


@pytest.fixture
async def hooks(services: EmbeddedStack, schema: None, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(hook_settings(services, tmp_path)) as client:
        yield client


@pytest.fixture
async def redis(services: EmbeddedStack) -> AsyncIterator[Redis]:
    r = Redis.from_url(services.redis_url, decode_responses=True)
    yield r
    await r.aclose()


StartProbe = Callable[..., Awaitable[WorkflowHandle]]


@pytest.fixture
async def probe(temporal_client: Client) -> AsyncIterator[StartProbe]:
    """Starts probes (as `billing-test-<uuid>` unless named) on a worker of this test; terminates them after."""
    queue = f"webhook-probe-{uuid.uuid4()}"
    started: list[WorkflowHandle] = []

    async def start(workflow_id: str | None = None) -> WorkflowHandle:
        handle = await temporal_client.start_workflow(
            WebhookProbe.run, id=workflow_id or f"billing-test-{uuid.uuid4()}", task_queue=queue
        )
        started.append(handle)
        return handle

    async with Worker(temporal_client, task_queue=queue, workflows=[WebhookProbe]):
        yield start
        for handle in started:
            try:
                await handle.terminate("test over")
            except Exception:
                pass


@pytest.fixture
def webhook_log() -> AsyncIterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prognet.api.stripe_webhooks")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


# --- helpers ----------------------------------------------------------------------------------------------------


def pi_event(
    event_type: str,
    workflow_id: str | None,
    *,
    pi_id: str | None = None,
    decline_code: str | None = None,
    event_id: str | None = None,
) -> dict:
    """A Stripe event of a PaymentIntent, in the shape Stripe sends."""
    failed = event_type == "payment_intent.payment_failed"
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "request": {"id": None, "idempotency_key": None},
        "data": {
            "object": {
                "id": pi_id or f"pi_{uuid.uuid4().hex[:24]}",
                "object": "payment_intent",
                "amount": 2000,
                "currency": "usd",
                "status": "requires_payment_method" if failed else "succeeded",
                "metadata": {"workflow_id": workflow_id} if workflow_id else {},
                "last_payment_error": {"type": "card_error", "code": "card_declined", "decline_code": decline_code}
                if failed
                else None,
            }
        },
    }


async def deliver(
    client: httpx.AsyncClient,
    event: dict | bytes,
    secret: str | list[str] = CURRENT,
    *,
    timestamp: int | None = None,
    header: str | None = None,
    sign: bool = True,
) -> httpx.Response:
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0"}
    if sign:
        headers["Stripe-Signature"] = header or signature_header(payload, secret, timestamp)
    return await client.post(URL, content=payload, headers=headers)


async def outcomes(handle: WorkflowHandle, at_least: int = 0, timeout: float = 10.0) -> list[PaymentOutcome]:
    """The outcomes the probe holds (queries are consistent: a signal already accepted is in the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await handle.query(QUERY_OUTCOMES, result_type=list[PaymentOutcome])
        if len(got) >= at_least or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def assert_logged_without_secrets(records: list[logging.LogRecord], payload: bytes, *secrets: str) -> str:
    """The one warning of a rejection; it names a reason but holds neither the body nor any secret."""
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in records]
    standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
    fields = {k: v for k, v in vars(warnings[0]).items() if k not in standard}  # what the JSON log line carries
    text = json.dumps([warnings[0].getMessage(), fields], default=str)
    for secret_or_body in (*secrets, payload.decode(errors="replace")):
        assert secret_or_body not in text
    return warnings[0].reason


# --- routing ----------------------------------------------------------------------------------------------------


async def test_a_succeeded_payment_is_signalled_to_its_billing_cycle(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    response = await deliver(hooks, event)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "routed": True}
    assert await outcomes(cycle, 1) == [
        PaymentOutcome(
            payment_intent_id=event["data"]["object"]["id"], status="succeeded", decline_code=None, event_id=event["id"]
        )
    ]
    assert 0 < await redis.ttl(dedupe_key(event["id"])) <= DEDUPE_TTL_SECONDS


async def test_a_failed_payment_carries_its_decline_code(hooks: httpx.AsyncClient, probe: StartProbe) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.payment_failed", cycle.id, decline_code="insufficient_funds")
    response = await deliver(hooks, event)
    assert response.status_code == 200 and response.json()["routed"] is True
    [outcome] = await outcomes(cycle, 1)
    assert (outcome.status, outcome.decline_code, outcome.event_id) == ("failed", "insufficient_funds", event["id"])


async def test_a_duplicate_event_is_acknowledged_and_routed_once(hooks: httpx.AsyncClient, probe: StartProbe) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    first = await deliver(hooks, event)
    again = await deliver(hooks, event)  # a separate delivery, signed anew, as Stripe retries
    assert first.json() == {"received": True, "routed": True}
    assert again.status_code == 200 and again.json() == {"received": True, "duplicate": True}
    assert len(await outcomes(cycle, 2, timeout=1.0)) == 1


async def test_out_of_order_events_are_both_delivered(hooks: httpx.AsyncClient, probe: StartProbe) -> None:
    """A failure arriving after the success of the same PaymentIntent is passed on too: keeping the success is
    the billing cycle's rule (`PaymentOutcome`), the endpoint only answers and routes."""
    cycle = await probe()
    pi = f"pi_{uuid.uuid4().hex[:24]}"
    succeeded = pi_event("payment_intent.succeeded", cycle.id, pi_id=pi)
    failed = pi_event("payment_intent.payment_failed", cycle.id, pi_id=pi, decline_code="generic_decline")
    answers = [await deliver(hooks, succeeded), await deliver(hooks, failed)]
    assert [a.json() for a in answers] == [{"received": True, "routed": True}] * 2
    got = await outcomes(cycle, 2)
    assert [(o.payment_intent_id, o.status, o.event_id) for o in got] == [
        (pi, "succeeded", succeeded["id"]),
        (pi, "failed", failed["id"]),
    ]


async def test_a_success_the_cycle_has_from_its_own_charge_is_not_signalled(
    services: EmbeddedStack, hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log
) -> None:
    """The charging activity notes the call before it and keeps the note for a success: that cycle ends in the
    workflow task that made the call, where a signal would make the server refuse the task. A decline, a failure
    event and a cycle without a note still get their signals."""
    billing = BillingActivities(
        Settings(stripe_api_base=services.stripe_api_base, stripe_secret_key=services.stripe_secret_key), redis=redis
    )
    env = ActivityEnvironment()
    tenant_id = uuid.uuid4()
    customer = await env.run(
        billing.create_stripe_customer,
        CreateStripeCustomer(tenant_id=tenant_id, name="Acme", idempotency_key=f"tenant-{tenant_id}:customer"),
    )

    async def charge(cycle: WorkflowHandle, payment_method: str) -> str:
        info = await env.run(
            billing.create_payment_intent,
            CreatePaymentIntent(
                idempotency_key=f"{cycle.id}:pi:1",
                invoice_id=str(uuid.uuid4()),
                tenant_id=tenant_id,
                subscription_id=uuid.uuid4(),
                workflow_id=cycle.id,
                amount=2000,
                currency="eur",
                stripe_customer_id=customer.customer_id,
                payment_method=payment_method,
            ),
        )
        return info.payment_intent_id

    paid = await probe()
    pi = await charge(paid, "pm_card_visa")
    assert 0 < await redis.ttl(charging_key(paid.id)) <= CHARGING_TTL_SECONDS
    held_back = await deliver(hooks, pi_event("payment_intent.succeeded", paid.id, pi_id=pi))
    assert held_back.status_code == 200 and held_back.json() == {"received": True, "routed": False}
    reasons = [r.reason for r in webhook_log if r.getMessage() == "stripe webhook not routed"]
    assert reasons == ["the cycle has this success from its own charge call"]
    failure = pi_event("payment_intent.payment_failed", paid.id, pi_id=pi, decline_code="generic_decline")
    assert (await deliver(hooks, failure)).json() == {"received": True, "routed": True}  # only a success is held
    assert [o.status for o in await outcomes(paid, 1)] == ["failed"]

    declined = await probe()
    pi = await charge(declined, "pm_card_chargeDeclined")
    assert await redis.exists(charging_key(declined.id)) == 0  # it waits for what comes next: events reach it
    late_success = await deliver(hooks, pi_event("payment_intent.succeeded", declined.id, pi_id=pi))
    assert late_success.json() == {"received": True, "routed": True}
    assert [o.status for o in await outcomes(declined, 1)] == ["succeeded"]


async def test_a_cycle_that_is_not_running_is_not_routed(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log: list[logging.LogRecord]
) -> None:
    never_started = pi_event("payment_intent.succeeded", f"billing-test-{uuid.uuid4()}")
    response = await deliver(hooks, never_started)
    assert response.status_code == 200 and response.json() == {"received": True, "routed": False}
    assert await redis.exists(dedupe_key(never_started["id"]))  # handled: a redelivery is a duplicate

    ended = await probe()
    await ended.terminate("cycle over")
    response = await deliver(hooks, pi_event("payment_intent.payment_failed", ended.id, decline_code="expired_card"))
    assert response.status_code == 200 and response.json() == {"received": True, "routed": False}
    infos = [r for r in webhook_log if r.levelno == logging.INFO and r.getMessage() == "stripe webhook not routed"]
    assert [r.reason for r in infos] == ["workflow not running"] * 2


async def test_only_billing_workflows_are_targets(
    hooks: httpx.AsyncClient, probe: StartProbe, webhook_log: list[logging.LogRecord]
) -> None:
    other = await probe(f"tenant-test-{uuid.uuid4()}")  # running, listening for the signal, but not billing
    response = await deliver(hooks, pi_event("payment_intent.succeeded", other.id))
    assert response.status_code == 200 and response.json() == {"received": True, "routed": False}
    no_metadata = await deliver(hooks, pi_event("payment_intent.succeeded", None))
    assert no_metadata.status_code == 200 and no_metadata.json() == {"received": True, "routed": False}
    assert await outcomes(other) == []
    assert {r.workflow_id for r in webhook_log if r.getMessage() == "stripe webhook not routed"} == {other.id, None}


async def test_other_event_types_are_received_not_routed(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis
) -> None:
    cycle = await probe()
    refunded = {**pi_event("payment_intent.succeeded", cycle.id), "type": "charge.refunded"}
    refunded["data"]["object"] = {
        "id": "ch_1",
        "object": "charge",
        "amount_refunded": 700,
        "metadata": {"workflow_id": cycle.id},
    }
    response = await deliver(hooks, refunded)
    assert response.status_code == 200 and response.json() == {"received": True, "routed": False}
    assert await redis.get(dedupe_key(refunded["id"])) == "charge.refunded"
    assert (await deliver(hooks, refunded)).json() == {"received": True, "duplicate": True}
    assert await outcomes(cycle) == []


# --- rejected deliveries: 400, logged without payload or secrets, no effect ------------------------------------


async def rejected(
    client: httpx.AsyncClient, redis: Redis, cycle: WorkflowHandle, event: dict, slug: str, **how: object
) -> None:
    response = await deliver(client, event, **how)  # type: ignore[arg-type]
    assert_problem(response, 400, slug)
    assert not await redis.exists(dedupe_key(event["id"]))
    assert await outcomes(cycle) == []


async def test_a_forged_signature_is_refused(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log: list[logging.LogRecord]
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    await rejected(hooks, redis, cycle, event, "bad-request", secret="whsec_forged_" + "f" * 24)
    reason = assert_logged_without_secrets(webhook_log, json.dumps(event).encode(), CURRENT)
    assert reason == "no signature made with a current or previous webhook secret"


async def test_a_genuine_header_on_a_changed_body_is_refused(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.payment_failed", cycle.id, decline_code="card_declined")
    header = signature_header(json.dumps(event).encode(), CURRENT)
    event["type"] = "payment_intent.succeeded"
    await rejected(hooks, redis, cycle, event, "bad-request", header=header)


async def test_a_stale_signature_is_refused(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log: list[logging.LogRecord]
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    await rejected(hooks, redis, cycle, event, "bad-request", timestamp=int(time.time()) - 301)
    assert (
        assert_logged_without_secrets(webhook_log, json.dumps(event).encode(), CURRENT) == "signature older than 300 s"
    )
    fresh_enough = await deliver(hooks, event, timestamp=int(time.time()) - 240)
    assert fresh_enough.json() == {"received": True, "routed": True}


async def test_a_signature_from_the_future_is_refused(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log: list[logging.LogRecord]
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    # 310, not 301: a second may pass between this clock and the server's
    await rejected(hooks, redis, cycle, event, "bad-request", timestamp=int(time.time()) + 310)
    reason = assert_logged_without_secrets(webhook_log, json.dumps(event).encode(), CURRENT)
    assert reason == "signature more than 300 s in the future"
    await rejected(hooks, redis, cycle, event, "bad-request", timestamp=int(time.time()) + 10 * 365 * 86400)
    skewed_enough = await deliver(hooks, event, timestamp=int(time.time()) + 240)
    assert skewed_enough.json() == {"received": True, "routed": True}


async def test_a_missing_or_garbled_header_is_refused(
    hooks: httpx.AsyncClient, probe: StartProbe, redis: Redis, webhook_log: list[logging.LogRecord]
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    await rejected(hooks, redis, cycle, event, "bad-request", sign=False)
    assert (
        assert_logged_without_secrets(webhook_log, json.dumps(event).encode(), CURRENT)
        == "missing Stripe-Signature header"
    )
    await rejected(hooks, redis, cycle, event, "bad-request", header="t=yesterday,v1=nope")


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {',
        b"[]",
        b'{"id": "evt_2", "type": "charge.refunded"}',
        b"\xff\xfe not utf-8",
    ],
)
async def test_a_signed_body_that_is_no_event_is_refused(
    hooks: httpx.AsyncClient, redis: Redis, body: bytes, webhook_log: list[logging.LogRecord]
) -> None:
    response = await hooks.post(
        URL,
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature_header(body, CURRENT)},
    )
    assert_problem(response, 400, "malformed-json")
    assert not await redis.exists(dedupe_key("evt_1"), dedupe_key("evt_2"))
    assert_logged_without_secrets(webhook_log, body, CURRENT)


async def test_events_come_in_json_only(hooks: httpx.AsyncClient) -> None:
    payload = b"id=evt_1&type=payment_intent.succeeded"
    response = await hooks.post(
        URL,
        content=payload,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Stripe-Signature": signature_header(payload, CURRENT),
        },
    )
    assert_problem(response, 415, "unsupported-media-type")


# --- secret rotation ----------------------------------------------------------------------------------------------


async def test_the_previous_secret_is_accepted_while_it_is_configured(
    services: EmbeddedStack, schema: None, tmp_path: Path, probe: StartProbe, redis: Redis, hooks: httpx.AsyncClient
) -> None:
    cycle = await probe()
    signed_before_roll = pi_event("payment_intent.succeeded", cycle.id)
    assert_problem(await deliver(hooks, signed_before_roll, PREVIOUS), 400, "bad-request")  # not configured

    rolling = hook_settings(services, tmp_path, stripe_webhook_secret_previous=PREVIOUS)
    async with running_api(rolling) as api:
        assert (await deliver(api, signed_before_roll, PREVIOUS)).json() == {"received": True, "routed": True}
        both = pi_event("payment_intent.payment_failed", cycle.id, decline_code="do_not_honor")
        assert (await deliver(api, both, [CURRENT, PREVIOUS])).json() == {"received": True, "routed": True}
        assert_problem(
            await deliver(api, pi_event("payment_intent.succeeded", cycle.id), "whsec_other_" + "o" * 24),
            400,
            "bad-request",
        )
    assert [o.event_id for o in await outcomes(cycle, 2)] == [signed_before_roll["id"], both["id"]]


def test_production_refuses_the_public_dev_secret_as_the_previous_one() -> None:
    production = dict(
        environment="production",
        secret_key="x" * 48,
        database_url="postgresql+asyncpg://app@db/p",
        redis_url="redis://cache:6379/0",
        temporal_address="temporal:7233",
        smtp_host="smtp.internal",
        stripe_secret_key="sk_live_" + "k" * 40,
        stripe_webhook_secret="whsec_" + "w" * 32,
        payload_keys="k1:" + "A" * 43 + "=",
    )
    assert Settings(**production, stripe_webhook_secret_previous="whsec_" + "v" * 32)
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET_PREVIOUS"):
        Settings(**production, stripe_webhook_secret_previous=DEV_STRIPE_WEBHOOK_SECRET)


# --- Temporal unavailable: not handled, so Stripe retries ----------------------------------------------------------


async def test_when_temporal_is_down_the_event_is_released_for_stripes_retry(
    services: EmbeddedStack, schema: None, tmp_path: Path, probe: StartProbe, redis: Redis, hooks: httpx.AsyncClient
) -> None:
    cycle = await probe()
    event = pi_event("payment_intent.succeeded", cycle.id)
    down = hook_settings(services, tmp_path, temporal_address=f"127.0.0.1:{free_port()}")  # nothing listens
    async with running_api(down) as api:
        response = await deliver(api, event)
    assert_problem(response, 503, "workflow-engine-unavailable")
    assert response.headers["Retry-After"]
    assert not await redis.exists(dedupe_key(event["id"]))
    assert await outcomes(cycle) == []

    retried = await deliver(hooks, event)  # Stripe's retry reaches a healthy API
    assert retried.json() == {"received": True, "routed": True}
    assert [o.event_id for o in await outcomes(cycle, 1)] == [event["id"]]


async def test_when_redis_is_down_the_event_is_refused_naming_the_cache(
    services: EmbeddedStack, schema: None, tmp_path: Path
) -> None:
    event = pi_event("payment_intent.succeeded", f"billing-test-{uuid.uuid4()}")
    down = hook_settings(services, tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    async with running_api(down) as api:
        response = await deliver(api, event)
    assert_problem(response, 503, "cache-unavailable")  # not handled: Stripe retries it
    assert int(response.headers["Retry-After"]) > 0


# --- the Stripe sandbox delivering to the API over HTTP ----------------------------------------------------------


async def test_the_stripe_sandbox_delivers_to_the_api(
    services: EmbeddedStack, schema: None, tmp_path: Path, probe: StartProbe
) -> None:
    """Real deliveries: signed by the sandbox, duplicated by it, POSTed over a socket to the running API."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(hook_settings(services, tmp_path)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with StripeSandbox(port=0, webhook_url=f"http://127.0.0.1:{port}{URL}", webhook_secret=CURRENT) as sb:
            sb.configure_webhooks(mode="duplicate", retry_delays=[0.05], enabled_events=["payment_intent.*"])
            sdk = stripe.StripeClient("sk_test_webhooks", base_addresses={"api": sb.api_base}, max_network_retries=0)
            cycle = await probe()
            paid = await sdk.v1.payment_intents.create_async(
                params={
                    "amount": 2000,
                    "currency": "usd",
                    "payment_method": "pm_card_visa",
                    "confirm": True,
                    "metadata": {"workflow_id": cycle.id},
                }
            )
            with pytest.raises(stripe.CardError):
                await sdk.v1.payment_intents.create_async(
                    params={
                        "amount": 2000,
                        "currency": "usd",
                        "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
                        "confirm": True,
                        "metadata": {"workflow_id": cycle.id},
                    }
                )
            await sb.wait_for_webhooks()
            deliveries = sb.webhook_deliveries()
    finally:
        server.should_exit = True
        await serving

    assert deliveries and all(d["status"] == 200 for d in deliveries)  # every copy answered 2xx, none retried
    assert len(deliveries) == 2 * 4  # created + succeeded/failed, per PaymentIntent, each twice
    got = await outcomes(cycle, 2)
    assert [(o.payment_intent_id == paid.id, o.status, o.decline_code) for o in got] == [
        (True, "succeeded", None),
        (False, "failed", "insufficient_funds"),
    ]


def test_the_endpoint_acts_on_exactly_the_events_it_is_subscribed_to():
    """Stripe (and the dev stack's sandbox) sends the endpoint only STRIPE_WEBHOOK_EVENTS: an event routed but not
    subscribed to would never arrive, one subscribed to but not routed would be verified and dropped."""
    intent = {"id": "pi_1", "metadata": {"workflow_id": "billing-sub-0"}}

    def routed(event_type: str) -> bool:
        return route_of({"id": "evt_1", "type": event_type, "data": {"object": intent}}).outcome is not None

    others = ["payment_intent.created", "charge.succeeded", "charge.failed", "charge.refunded"]
    assert [t for t in [*STRIPE_WEBHOOK_EVENTS, *others] if routed(t)] == list(STRIPE_WEBHOOK_EVENTS)

"""Outbound webhooks over real HTTP: the endpoints API, the dispatcher, the delivery workflow on the stack's
Temporal server with the real activities, PostgreSQL and Redis, and a real local receiver.

Each test runs its own webhook worker on its own task queue with a short retry schedule (the exact default schedule
is tested under the time-skipping server in tests/unit/test_webhook_delivery.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from api.app import create_app
from models.db import transaction
from models.event_stream import ALL_EVENTS, StreamEvent
from models.events import record_event
from models.names import SA_TENANT_ID
from models.tables import DomainEvent
from prognet.settings import Settings
from prognet_dev import EmbeddedStack, message_text, read_messages
from tests.api.conftest import Person, add_member, assert_problem, insert_tenant, person
from tests.support.sse import event as stream_event
from tests.support.webhooks import (
    Hooks,
    as_stream_event,
    create_endpoint,
    delivery_in,
    poll,
    running_hooks,
)
from webhooks import signing
from webhooks.dispatcher import GROUP, StreamConsumer


@pytest.fixture
async def hooks(temporal_settings, temporal_client, app_engine) -> AsyncIterator[Hooks]:
    async with running_hooks(temporal_settings, temporal_client, app_engine) as h:
        yield h


async def owner_and_tenant(api: httpx.AsyncClient, engine: AsyncEngine) -> tuple[Person, str]:
    owner = await person(api, engine)
    return owner, str(await insert_tenant(engine, owner.id))


async def emit(engine: AsyncEngine, tenant_id: str, type: str = "member.added", **payload) -> StreamEvent:
    """A tenant event as the relay would put it on the stream (the row is real; the relay is not running here)."""
    tid = uuid.UUID(tenant_id)
    async with transaction(engine, tenant_id=tid) as db:
        row = record_event(db, type, "membership", uuid.uuid4(), payload or {"role": "member"}, tenant_id=tid)
        await db.flush()
    return as_stream_event(row)


async def event_types(engine: AsyncEngine, tenant_id: str, aggregate_id: str) -> list[str]:
    async with transaction(engine, tenant_id=uuid.UUID(tenant_id)) as db:
        rows = await db.exec(
            select(DomainEvent).where(DomainEvent.aggregate_id == aggregate_id).order_by(DomainEvent.id)  # type: ignore[arg-type]
        )
        return [r.type for r in rows]


# --- the endpoints API -------------------------------------------------------------------------------------------


async def test_endpoints_crud_shows_the_secret_once_and_refuses_other_tenants(api, app_engine):
    owner, tenant = await owner_and_tenant(api, app_engine)
    base = f"/v1/tenants/{tenant}/webhook-endpoints"
    created = await create_endpoint(
        api, owner, tenant, "http://127.0.0.1:9/hook?token=abc", event_types=["invoice.*"], description="billing"
    )
    secret, endpoint = created["secret"], created["id"]
    assert secret.startswith("whsec_") and created["enabled"] is True and created["event_types"] == ["invoice.*"]

    listed = await api.get(base, headers=owner.headers)
    one = await api.get(f"{base}/{endpoint}", headers=owner.headers)
    assert [e["id"] for e in listed.json()] == [endpoint] and one.status_code == 200
    assert "secret" not in listed.json()[0] and "secret" not in one.json()
    assert "whsec_" not in listed.text + one.text

    patched = await api.patch(f"{base}/{endpoint}", json={"event_types": None, "enabled": False}, headers=owner.headers)
    assert patched.status_code == 200 and patched.json()["event_types"] is None and patched.json()["enabled"] is False
    rotated = await api.post(f"{base}/{endpoint}/rotate-secret", headers=owner.headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != secret
    overlap = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < overlap <= timedelta(hours=24)

    bad = await api.post(
        base, json={"url": "http://127.0.0.1/x", "event_types": ["invoice.nope"]}, headers=owner.headers
    )
    assert "invoice.nope" in assert_problem(bad, 422, "unknown-event-type")["detail"]

    # a member of the tenant: 403; the owner of another tenant: 404, here and with their own tenant's id
    member = await person(api, app_engine)
    await add_member(app_engine, tenant, member.id, "member")
    assert_problem(await api.get(base, headers=member.headers), 403, "forbidden")
    stranger, other_tenant = await owner_and_tenant(api, app_engine)
    for method, path in (("GET", base), ("GET", f"{base}/{endpoint}"), ("DELETE", f"{base}/{endpoint}")):
        assert_problem(await api.request(method, path, headers=stranger.headers), 404, "not-found")
    probe = f"/v1/tenants/{other_tenant}/webhook-endpoints/{endpoint}"
    assert_problem(await api.get(probe, headers=stranger.headers), 404, "not-found")
    assert_problem(await api.post(f"{probe}/rotate-secret", headers=stranger.headers), 404, "not-found")
    assert (await api.get(f"/v1/tenants/{other_tenant}/webhook-endpoints", headers=stranger.headers)).json() == []

    assert (await api.delete(f"{base}/{endpoint}", headers=owner.headers)).status_code == 204
    assert_problem(await api.get(f"{base}/{endpoint}", headers=owner.headers), 404, "not-found")
    assert await event_types(app_engine, tenant, endpoint) == [
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.deleted",
    ]
    async with transaction(app_engine, tenant_id=uuid.UUID(tenant)) as db:
        created_event = (await db.exec(select(DomainEvent).where(DomainEvent.aggregate_id == endpoint))).first()
    assert created_event is not None and created_event.payload["host"] == "127.0.0.1"
    assert "token" not in str(created_event.payload)  # a URL's query may be the receiver's credential


# --- deliveries --------------------------------------------------------------------------------------------------


async def test_a_matching_event_is_delivered_signed_once_even_if_dispatched_twice(
    api, app_engine, hooks, temporal_client
):
    owner, tenant = await owner_and_tenant(api, app_engine)
    earlier = await emit(app_engine, tenant, "member.added")
    endpoint = await create_endpoint(api, owner, tenant, f"{hooks.url}/in", event_types=["member.*"])
    assert await hooks.dispatcher.dispatch(earlier) == []  # before the endpoint existed: not its business
    secret = endpoint["secret"]
    hooks.receiver.secrets = [secret]

    event = await emit(app_engine, tenant, "member.added")
    ignored = await emit(app_engine, tenant, "invoice.voided", number=1, reason=None)
    first = await hooks.dispatcher.dispatch(event)
    assert await hooks.dispatcher.dispatch(event) == first and len(first) == 1  # the same delivery: a no-op
    assert await hooks.dispatcher.dispatch(ignored) == []  # filtered out

    delivered = await delivery_in(api, owner, tenant, endpoint["id"], "delivered")
    assert (
        delivered["attempts"] == 1
        and delivered["last_status_code"] == 200
        and delivered["event_type"] == "member.added"
    )
    assert '"ok"' in delivered["last_response_body"] and delivered["workflow_id"] == first[0]
    await poll(lambda: _true(len(hooks.receiver.delivered) == 1), what="the receiver")
    await asyncio.sleep(0.3)  # a second delivery would have arrived by now
    assert len(hooks.receiver.requests) == 1 and hooks.receiver.rejected == 0
    got = hooks.receiver.delivered[0]
    assert got.webhook_id == delivered["id"] and len(got.headers["webhook-signature"].split()) == 1
    assert got.body == {
        "id": str(event.event_id),
        "type": "member.added",
        "version": 1,
        "occurred_at": event.occurred_at.isoformat(),
        "tenant_id": tenant,
        "aggregate": {"type": "membership", "id": event.aggregate_id},
        "payload": {"role": "member"},
    }

    handle = temporal_client.get_workflow_handle(first[0])
    description = await handle.describe()
    assert description.typed_search_attributes.get(SA_TENANT_ID) == tenant
    history = b"".join(e.SerializeToString() for e in (await handle.fetch_history()).events)
    assert secret.encode() not in history and secret.removeprefix("whsec_").encode() not in history
    assert b"127.0.0.1" not in history  # nor the URL: the attempt reads it from the row

    # rotation: the next delivery carries two signatures, each verifies with its own secret
    rotated = (
        await api.post(f"/v1/tenants/{tenant}/webhook-endpoints/{endpoint['id']}/rotate-secret", headers=owner.headers)
    ).json()["secret"]
    await hooks.dispatcher.dispatch(await emit(app_engine, tenant, "member.added"))
    await poll(lambda: _true(len(hooks.receiver.delivered) == 2), what="the second delivery")
    second = hooks.receiver.delivered[1]
    assert len(second.headers["webhook-signature"].split()) == 2
    now = int(datetime.now(UTC).timestamp())
    for key in (secret, rotated):
        assert signing.verify(key, second.headers, second.raw, now=now) == second.webhook_id


async def _true(value: bool) -> bool:
    return value


async def test_deliveries_to_one_receiver_reuse_the_workers_kept_alive_connection(api, app_engine, hooks):
    owner, tenant = await owner_and_tenant(api, app_engine)
    endpoint = await create_endpoint(api, owner, tenant, f"{hooks.url}/in")
    hooks.receiver.secrets = [endpoint["secret"]]
    for n in range(1, 4):  # one after the other: each can find the previous one's connection idle in the pool
        await hooks.dispatcher.dispatch(await emit(app_engine, tenant))
        await poll(lambda n=n: _true(len(hooks.receiver.delivered) == n), what=f"delivery {n}")
    peers = {d.peer for d in hooks.receiver.delivered}
    assert len(peers) == 1 and "" not in peers, peers  # three deliveries, one TCP connection


async def test_500_twice_then_200_is_delivered_on_attempt_3(api, app_engine, hooks):
    owner, tenant = await owner_and_tenant(api, app_engine)
    endpoint = await create_endpoint(api, owner, tenant, hooks.url)
    hooks.receiver.secrets, hooks.receiver.fail = [endpoint["secret"]], 2
    await hooks.dispatcher.dispatch(await emit(app_engine, tenant))
    delivered = await delivery_in(api, owner, tenant, endpoint["id"], "delivered")
    assert delivered["attempts"] == 3 and delivered["last_status_code"] == 200
    assert [r.webhook_id for r in hooks.receiver.requests] == [delivered["id"]] * 3  # one id: receivers dedupe
    gaps = [b.at - a.at for a, b in zip(hooks.receiver.requests, hooks.receiver.requests[1:], strict=False)]
    assert all(g >= 0.19 for g in gaps), gaps  # the schedule's 0.2 s timers


async def test_exhaustion_dead_letters_and_the_tenant_admin_retries_it(api, app_engine, hooks):
    owner, tenant = await owner_and_tenant(api, app_engine)
    admin = await person(api, app_engine)
    await add_member(app_engine, tenant, admin.id, "admin")
    endpoint = await create_endpoint(api, owner, tenant, hooks.url)
    hooks.receiver.secrets, hooks.receiver.fail = [endpoint["secret"]], 3  # every attempt of the schedule
    await hooks.dispatcher.dispatch(await emit(app_engine, tenant))
    dead = await delivery_in(api, admin, tenant, endpoint["id"], "dead_lettered")
    assert dead["attempts"] == 3 and dead["last_status_code"] == 500 and "no attempt succeeded" in dead["last_error"]
    assert "failing on purpose" in dead["last_response_body"]

    retry = f"/v1/tenants/{tenant}/webhook-endpoints/{endpoint['id']}/deliveries/{dead['id']}/retry"
    answer = await api.post(retry, json={"reason": "receiver fixed"}, headers=admin.headers)
    assert answer.status_code == 202, answer.text
    delivered = await delivery_in(api, admin, tenant, endpoint["id"], "delivered")
    assert delivered["attempts"] == 4 and len(hooks.receiver.delivered) == 1
    assert_problem(await api.post(retry, headers=admin.headers), 409, "webhook-delivery-not-dead-lettered")


async def test_an_endpoint_failing_every_delivery_too_long_is_disabled_with_an_event_and_an_email(
    api, app_engine, temporal_settings, temporal_client, services: EmbeddedStack
):
    async with running_hooks(temporal_settings, temporal_client, app_engine, webhook_disable_after=timedelta(0)) as h:
        owner, tenant = await owner_and_tenant(api, app_engine)
        endpoint = await create_endpoint(api, owner, tenant, h.url)
        h.receiver.secrets, h.receiver.fail = [endpoint["secret"]], 100
        await h.dispatcher.dispatch(await emit(app_engine, tenant))
        dead = await delivery_in(api, owner, tenant, endpoint["id"], "dead_lettered")
    assert dead["attempts"] == 1 and "disabled" in dead["last_error"]
    view = (await api.get(f"/v1/tenants/{tenant}/webhook-endpoints/{endpoint['id']}", headers=owner.headers)).json()
    assert view["enabled"] is False and view["failing_since"] and "HTTP 500" in view["disabled_reason"]
    assert (await event_types(app_engine, tenant, endpoint["id"]))[-1] == "webhook_endpoint.disabled"

    async def email():
        return [m for m in read_messages(services.maildir) if owner.email.lower() in str(m["To"]).lower()]

    [message] = await poll(email, what="the owner's email")
    assert message["Subject"] == "A webhook endpoint was disabled" and endpoint["id"] in message_text(message)
    # a disabled endpoint is not dispatched to
    async with running_hooks(temporal_settings, temporal_client, app_engine) as h2:
        assert await h2.dispatcher.dispatch(await emit(app_engine, tenant)) == []


# --- SSRF --------------------------------------------------------------------------------------------------------


@pytest.fixture
async def production_api(temporal_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(temporal_settings.model_copy(update={"environment": "production"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            yield c


PRIVATE_TARGETS = [
    "http://127.0.0.1:8080/hook",
    "https://127.0.0.1/hook",
    "https://10.0.0.5/hook",
    "https://100.64.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/",
    "https://localhost/hook",
]


async def test_production_refuses_private_targets_at_creation(production_api, app_engine):
    owner, tenant = await owner_and_tenant(production_api, app_engine)
    base = f"/v1/tenants/{tenant}/webhook-endpoints"
    for url in PRIVATE_TARGETS:
        answer = await production_api.post(base, json={"url": url}, headers=owner.headers)
        assert "cannot receive webhooks" in assert_problem(answer, 422, "webhook-target-refused")["detail"], url
    assert (await production_api.get(base, headers=owner.headers)).json() == []


async def test_production_refuses_a_private_target_at_delivery_time(
    api, app_engine, temporal_settings, temporal_client
):
    """An endpoint saved while private targets were allowed (or whose DNS changed since) fails at delivery."""
    prod = {"environment": "production"}
    async with running_hooks(temporal_settings, temporal_client, app_engine, **prod) as h:
        owner, tenant = await owner_and_tenant(api, app_engine)
        endpoint = await create_endpoint(api, owner, tenant, h.url)  # the development API accepts it
        h.receiver.secrets = [endpoint["secret"]]
        await h.dispatcher.dispatch(await emit(app_engine, tenant))
        dead = await delivery_in(api, owner, tenant, endpoint["id"], "dead_lettered")
    assert dead["attempts"] == 1 and dead["last_status_code"] is None
    assert "target refused" in dead["last_error"] and "must use https" in dead["last_error"]
    assert h.receiver.requests == []


# --- the dispatcher's consumer group -----------------------------------------------------------------------------


async def test_the_dispatcher_reads_events_all_as_a_consumer_group_and_acks(api, app_engine, hooks, redis_url):
    owner, tenant = await owner_and_tenant(api, app_engine)
    endpoint = await create_endpoint(api, owner, tenant, hooks.url)
    hooks.receiver.secrets = [endpoint["secret"]]
    redis = Redis.from_url(redis_url)
    try:
        consumer = StreamConsumer(redis, hooks.dispatcher, consumer="test")
        await consumer.ensure_group()
        event = await emit(app_engine, tenant)
        await redis.xadd(ALL_EVENTS, event.to_fields())  # as the relay publishes it
        await redis.xadd(ALL_EVENTS, {"garbage": "1"})  # unreadable: skipped, not a poison pill
        assert await consumer.run_once(block_ms=500) == 1
        assert (await redis.xpending(ALL_EVENTS, GROUP))["pending"] == 0
        await poll(lambda: _true(len(hooks.receiver.delivered) == 1), what="the delivery")
        assert hooks.receiver.delivered[0].body["id"] == str(event.event_id)
    finally:
        await redis.aclose()


async def test_a_failed_dispatch_acks_the_entries_before_it_and_is_read_again(redis_url):
    """One XACK per round for what was dispatched; the entry that failed, and those after it, stay pending and are
    the next round's first read (own pending entries are read again after a failure, not on every round)."""

    class Flaky:
        def __init__(self) -> None:
            self.seen: list[str] = []
            self.fail_on: str | None = None

        async def dispatch(self, event: StreamEvent) -> list[str]:
            if event.type == self.fail_on:
                raise RuntimeError("PostgreSQL is down")
            if event.type.startswith("test."):  # other tests' events may share the stream
                self.seen.append(event.type)
            return []

    def entry(kind: str) -> dict:
        return stream_event(kind, tenant=uuid.uuid4()).to_fields()

    redis = Redis.from_url(redis_url, decode_responses=True)
    flaky = Flaky()
    name = f"flaky-{uuid.uuid4().hex[:6]}"

    async def mine() -> set[str]:
        return {p["message_id"] for p in await redis.xpending_range(ALL_EVENTS, GROUP, "-", "+", 1000, name)}

    try:
        consumer = StreamConsumer(redis, flaky, consumer=name)
        await consumer.ensure_group()
        ids = [await redis.xadd(ALL_EVENTS, entry(kind)) for kind in ("test.first", "test.second", "test.third")]
        flaky.fail_on = "test.second"
        with pytest.raises(RuntimeError):
            await consumer.run_once(block_ms=500)
        assert flaky.seen == ["test.first"]
        assert ids[0] not in await mine() and {ids[1], ids[2]} <= await mine()

        flaky.fail_on = None
        await consumer.run_once(block_ms=500)
        assert flaky.seen == ["test.first", "test.second", "test.third"]
        assert not set(ids) & await mine()
    finally:
        await redis.aclose()

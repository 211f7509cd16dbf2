"""Prometheus metrics (API and worker) and the Redis-shared circuit breaker, against the real stack."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
import stripe as stripe_sdk
from redis.asyncio import Redis
from sqlmodel import select

from activities.billing import stripe_client
from activities.circuits import Circuits, circuit_open_error
from models.db import transaction
from models.tables import DomainEvent
from prognet.circuit import CircuitBreaker, CircuitConfig, CircuitOpenError, Transition
from prognet_dev import SandboxAdmin, free_port
from tests.api.conftest import create_tenant, person, wait_for_tenant
from workers.main import serve_metrics


def sample(text: str, series: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = f"{series}{{{wanted}}}" if labels else series
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_when_a_saga_runs_and_carry_no_ids_or_emails(api, app_engine, temporal_settings):
    before = (await api.get("/metrics")).text
    owner = await person(api, app_engine)
    tid = (await create_tenant(api, owner))["tenant_id"]
    await wait_for_tenant(api, owner, tid)
    for _ in range(50):  # the saga's last status change is reported as the workflow completes
        after = (await api.get("/metrics")).text
        if sample(after, "prognet_saga_completed_total", saga="tenant_provisioning") > sample(
            before, "prognet_saga_completed_total", saga="tenant_provisioning"
        ):
            break
        await asyncio.sleep(0.1)
    response = await api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text
    for series in ("prognet_saga_started_total", "prognet_saga_completed_total"):
        assert sample(after, series, saga="tenant_provisioning") > sample(before, series, saga="tenant_provisioning")
    assert sample(after, "prognet_logins_total", outcome="success") > sample(
        before, "prognet_logins_total", outcome="success"
    )
    assert sample(after, "prognet_emails_total", state="queued") >= 0  # declared even before any email
    labels = {"method": "GET", "route": "/v1/tenants/{tenant_id}", "status_class": "2xx"}
    assert sample(after, "prognet_http_requests_total", **labels) >= 1
    assert sample(after, "prognet_http_request_duration_seconds_count", **labels) >= 1
    assert 'route="/v1/tenants/{tenant_id}"' in after
    assert tid not in after and str(owner.id) not in after and owner.email.lower() not in after.lower()
    assert "@" not in after  # no email address anywhere, in any label
    assert "/metrics" not in (await api.get("/openapi.json")).json()["paths"]
    # the worker's own endpoint serves the same business series (in the worker process)
    port = free_port()
    assert serve_metrics(temporal_settings.model_copy(update={"worker_metrics_port": port})) == port
    async with httpx.AsyncClient() as http:
        worker_text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert sample(worker_text, "prognet_saga_started_total", saga="tenant_provisioning") >= 1


def _config(**changes: object) -> CircuitConfig:
    values: dict = {
        "window": timedelta(seconds=30),
        "min_calls": 3,
        "failure_rate": 0.5,
        "cooldown": timedelta(seconds=1),
        "half_open_probes": 1,
    }
    return CircuitConfig(**(values | changes))


async def test_stripe_breaker_opens_fails_fast_probes_and_recovers_across_processes(
    services, temporal_settings, stripe: SandboxAdmin, stripe_faults, app_engine
):
    """Two Circuits (two worker processes) with their own Redis connections share one "stripe"-like circuit."""
    name = f"stripe-{uuid.uuid4().hex[:8]}"
    settings = temporal_settings.model_copy(
        update={"circuit_min_calls": 3, "circuit_cooldown_seconds": 1.0, "circuit_window_seconds": 30.0}
    )
    one, two = Circuits(app_engine, settings), Circuits(app_engine, settings)
    seen: list[Transition] = []
    for circuits in (one, two):
        breaker = circuits.breaker(name)
        report = breaker.on_transition
        assert report is not None

        async def observe(t: Transition, report=report) -> None:
            seen.append(t)
            await report(t)

        breaker.on_transition = observe
    sdk_one = stripe_client(settings, one.breaker(name))
    sdk_two = stripe_client(settings, two.breaker(name))
    try:
        # a card decline / 4xx is Stripe answering: it never counts
        await stripe_faults({"status": 400, "count": 3, "path_prefix": "/v1/customers", "method": "GET"})
        for _ in range(3):
            with pytest.raises(stripe_sdk.InvalidRequestError):
                await sdk_one.v1.customers.list_async()
        assert seen == []
        await stripe_faults({"status": 503, "count": 3, "path_prefix": "/v1/customers", "method": "GET"})
        reached = len(await stripe.requests(path_prefix="/v1/customers"))
        for sdk in (sdk_one, sdk_two, sdk_one):
            with pytest.raises(stripe_sdk.APIError):
                await sdk.v1.customers.list_async()
        assert [t.state for t in seen] == ["open"]  # 3 of 6 calls in the window failed: 50 %
        for sdk in (sdk_two, sdk_one, sdk_two):  # both "processes" now fail fast: nothing reaches Stripe
            with pytest.raises(CircuitOpenError) as opened:
                await sdk.v1.customers.list_async()
        assert opened.value.retry_after <= timedelta(seconds=1)
        assert opened.value.state == "open" and str(opened.value).startswith(f"{name} circuit open until ")
        assert len(await stripe.requests(path_prefix="/v1/customers")) == reached + 3
        await asyncio.sleep(opened.value.retry_after.total_seconds() + 0.05)
        # half-open: one probe at a time, whichever process asks first
        await one.breaker(name).acquire()
        with pytest.raises(CircuitOpenError):
            await two.breaker(name).acquire()
        await one.breaker(name).record(ok=True)
        assert [t.state for t in seen] == ["open", "half_open", "closed"]
        await sdk_two.v1.customers.list_async()  # closed again: calls reach Stripe
        assert len(await stripe.requests(path_prefix="/v1/customers")) == reached + 4
        async with transaction(app_engine, platform=True) as db:
            events = (
                await db.exec(
                    select(DomainEvent).where(DomainEvent.aggregate_type == "circuit", DomainEvent.aggregate_id == name)
                )
            ).all()
        assert sorted(e.type for e in events) == ["circuit.closed", "circuit.opened"]
        assert all(e.tenant_id is None and e.user_id is None for e in events)
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_failed_probe_reopens_and_a_lost_probe_frees_its_slot(redis_url):
    redis = Redis.from_url(redis_url)
    breaker = CircuitBreaker(redis, f"smtp-{uuid.uuid4().hex[:8]}", _config(cooldown=timedelta(milliseconds=300)))
    try:
        for _ in range(3):
            await breaker.acquire()
            await breaker.record(ok=False)
        with pytest.raises(CircuitOpenError):
            await breaker.acquire()
        await asyncio.sleep(0.35)
        await breaker.acquire()  # the probe
        await breaker.record(ok=False)  # still down: open again, a new cool-down
        with pytest.raises(CircuitOpenError):
            await breaker.acquire()
        await asyncio.sleep(0.35)
        await breaker.acquire()  # a probe whose caller dies and never reports …
        with pytest.raises(CircuitOpenError):
            await breaker.acquire()
        await asyncio.sleep(0.35)
        await breaker.acquire()  # … frees its slot after a cool-down
        await breaker.record(ok=True)
        await breaker.acquire()  # closed
    finally:
        await redis.aclose()


async def test_a_call_turned_away_while_a_probe_is_out_comes_back_soon_not_after_a_cool_down(redis_url):
    """Two callers meet the end of a 30 s cool-down: one probes, the other is told to retry in moments (later,
    the longer the probe takes). Told to sit out another cool-down, it waited 30 s behind a probe that closed
    the circuit at once."""
    redis = Redis.from_url(redis_url)
    name = f"stripe-{uuid.uuid4().hex[:8]}"
    config = _config(cooldown=timedelta(seconds=30), half_open_retry=timedelta(milliseconds=200))
    breaker = CircuitBreaker(redis, name, config)
    try:
        seconds, micros = await redis.time()
        await redis.hset(
            f"circuit:{name}", mapping={"state": "open", "open_until": seconds * 1000 + micros // 1000, "probes": 0}
        )
        await breaker.acquire()  # the probe
        with pytest.raises(CircuitOpenError) as turned_away:
            await breaker.acquire()
        assert timedelta(0) < turned_away.value.retry_after <= timedelta(milliseconds=300)  # 200 ms x jitter
        # told what is going on: not "open until" the retry time, but half-open, and when to come back
        assert turned_away.value.state == "half_open"
        retry_at = turned_away.value.until.isoformat(timespec="seconds")
        assert turned_away.value.reason == f"half-open (a trial call is testing the service), try again at {retry_at}"
        failure = circuit_open_error(turned_away.value)
        assert failure.message == f"{name} circuit {turned_away.value.reason}"
        assert failure.details[0]["until"] == retry_at  # the message and the details say the same
        await asyncio.sleep(0.6)  # a slow probe: who is turned away now waits at least as long as it has been out
        with pytest.raises(CircuitOpenError) as later:
            await breaker.acquire()
        assert timedelta(milliseconds=550) <= later.value.retry_after <= timedelta(seconds=2)
        await breaker.record(ok=True)  # the probe succeeds: closed
        await asyncio.sleep(turned_away.value.retry_after.total_seconds())
        await breaker.acquire()  # the caller that was turned away goes through on its retry
        assert await redis.hget(f"circuit:{name}", "state") == b"closed"
    finally:
        await redis.aclose()


async def test_no_caller_is_told_to_wait_past_the_moment_the_probe_slot_frees(redis_url):
    redis = Redis.from_url(redis_url)
    name = f"stripe-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(redis, name, _config(cooldown=timedelta(seconds=1), half_open_retry=timedelta(seconds=2)))
    try:
        seconds, micros = await redis.time()
        await redis.hset(
            f"circuit:{name}", mapping={"state": "open", "open_until": seconds * 1000 + micros // 1000, "probes": 0}
        )
        await breaker.acquire()  # the probe, whose caller never reports: its slot frees after a cool-down (1 s)
        await asyncio.sleep(0.7)
        with pytest.raises(CircuitOpenError) as turned_away:
            await breaker.acquire()
        assert turned_away.value.retry_after <= timedelta(milliseconds=300)  # not 2 s: the slot frees before that
        await asyncio.sleep(turned_away.value.retry_after.total_seconds() + 0.02)
        await breaker.acquire()  # the freed slot: this caller is the probe now
    finally:
        await redis.aclose()


async def test_a_saga_waits_out_an_open_stripe_circuit_and_completes_by_itself(api, app_engine, redis, stripe):
    """Another worker opened the shared "stripe" circuit: provisioning waits (saying so), then carries on."""
    owner = await person(api, app_engine)
    seconds, micros = await redis.time()
    until_ms = seconds * 1000 + micros // 1000 + 2500
    await redis.hset("circuit:stripe", mapping={"state": "open", "open_until": until_ms, "probes": 0})
    posts = len(await stripe.requests(path_prefix="/v1/customers", method="POST"))
    tid = (await create_tenant(api, owner))["tenant_id"]
    waiting = ""
    for _ in range(100):
        view = (await api.get(f"/v1/tenants/{tid}", headers=owner.headers)).json()
        waiting = (view.get("saga") or {}).get("waiting_for") or ""
        if "circuit open" in waiting:
            break
        await asyncio.sleep(0.05)
    assert waiting.startswith("Stripe circuit open until "), waiting
    final = await wait_for_tenant(api, owner, tid, timeout=30)
    assert final["billing"]["stripe_customer_id"]
    assert len(await stripe.requests(path_prefix="/v1/customers", method="POST")) == posts + 1
    assert await redis.hget("circuit:stripe", "state") == "closed"  # the saga's call was the successful probe
    metrics = (await api.get("/metrics")).text
    assert sample(metrics, "prognet_circuit_state", circuit="stripe") == 0

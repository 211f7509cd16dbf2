"""Tracing end to end: one trace from the HTTP request through the saga to every SQL, Redis, Stripe and SMTP call;
the trace id in the `traceparent` header, problem bodies and log lines. The API and the worker run in this
process, so the in-memory exporter (tests/conftest.py) sees both."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from prognet.logs import JsonFormatter, configure_logging
from tests.api.conftest import PASSWORD, active_tenant, assert_problem, person


def trace_id_of(response) -> str:
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16) and int(flags, 16) & 1  # sampled
    return trace_id


def roots_of(found: list[ReadableSpan]) -> list[ReadableSpan]:
    ids = {s.context.span_id for s in found}
    return [s for s in found if s.parent is None or s.parent.span_id not in ids]


async def wait_for_trace(spans: InMemorySpanExporter, trace_id: str, *wanted: str, timeout: float = 20.0):
    """The trace's spans once a span named (or starting with) each of `wanted` has ended and the spans hang
    together (no span whose parent is still open)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [s for s in spans.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id]
        names = [s.name for s in found]
        missing = [w for w in wanted if not any(n.startswith(w) for n in names)]
        if not missing and len(roots_of(found)) == 1:
            return found
        assert asyncio.get_running_loop().time() < deadline, (
            f"never in the trace: {missing}; roots {[r.name for r in roots_of(found)]}; it has {sorted(names)}"
        )
        await asyncio.sleep(0.1)


def assert_one_tree(found: list[ReadableSpan], root_name: str) -> None:
    """One root, the API's server span, and every other span hangs under it."""
    assert [(r.name, r.kind) for r in roots_of(found)] == [(root_name, SpanKind.SERVER)]


def url_of(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("url.full") or attributes.get("http.url") or "")


def under(found: list[ReadableSpan], span: ReadableSpan, ancestor_prefix: str) -> bool:
    by_id = {s.context.span_id: s for s in found}
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        if span.name.startswith(ancestor_prefix):
            return True
    return False


async def test_registration_is_one_trace_from_the_request_to_the_smtp_send(api, spans):
    email = f"traced-{uuid.uuid4().hex[:10]}@example.com"
    response = await api.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    trace_id = trace_id_of(response)

    found = await wait_for_trace(
        spans,
        trace_id,
        "POST /v1/auth/register",
        "StartUpdateWithStartWorkflow:Registration",
        "RunWorkflow:Registration",
        "RunActivity:users.create_pending_user",
        "RunActivity:email.start_delivery",
        "StartWorkflow:EmailDelivery",
        "RunWorkflow:EmailDelivery",
        "smtp send",
        "RunActivity:email.send",
    )
    assert_one_tree(found, "POST /v1/auth/register")
    # the activities' own SQL, and the API's Redis (idempotency) calls, are in it too
    sql = [s for s in found if (s.attributes or {}).get("db.system") == "postgresql"]
    assert any(under(found, s, "RunActivity:users.create_pending_user") for s in sql)
    assert any((s.attributes or {}).get("db.system") == "redis" for s in found)
    [smtp] = [s for s in found if s.name == "smtp send"]
    # the email workflow's steps hang under its start, inside the local activity that handed it off (the workflow
    # spans are instants beside them)
    assert under(found, smtp, "StartWorkflow:EmailDelivery") and smtp.status.is_ok
    assert under(found, smtp, "RunActivity:email.start_delivery")
    # no address and no password in any attribute: traces leave the system
    text = json.dumps([dict(s.attributes or {}) for s in found], default=str)
    assert email.lower() not in text.lower() and PASSWORD not in text


async def test_tenant_provisioning_and_its_stripe_calls_are_one_trace(api, app_engine, spans):
    owner = await person(api, app_engine)
    response = await api.post(
        "/v1/tenants", json={"name": "Traced", "slug": f"tr-{uuid.uuid4().hex[:10]}"}, headers=owner.headers
    )
    assert response.status_code == 202, response.text
    found = await wait_for_trace(
        spans, trace_id_of(response), "RunWorkflow:TenantProvisioning", "RunActivity:billing.create_stripe_customer"
    )
    assert_one_tree(found, "POST /v1/tenants")
    stripe = [
        s
        for s in found
        if s.kind == SpanKind.CLIENT
        and (s.attributes or {}).get("http.request.method", (s.attributes or {}).get("http.method")) == "POST"
    ]
    assert any(under(found, s, "RunActivity:billing.create_stripe_customer") for s in stripe), [s.name for s in found]


async def test_a_billing_cycle_joins_the_subscribe_trace(api, app_engine, spans):
    owner = await person(api, app_engine)
    tenant_id = await active_tenant(api, owner)
    response = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions",
        json={"plan": "dev-minutely", "payment_method": "pm_card_visa"},
        headers=owner.headers,
    )
    assert response.status_code == 202, response.text
    found = await wait_for_trace(
        spans,
        trace_id_of(response),
        "RunWorkflow:Subscription",
        "RunWorkflow:BillingCycle",
        "RunActivity:billing.create_payment_intent",
    )
    assert_one_tree(found, "POST /v1/tenants/{tenant_id}/subscriptions")
    [create_pi] = [s for s in found if s.name == "RunActivity:billing.create_payment_intent"]
    assert any(
        s.kind == SpanKind.CLIENT and under(found, s, "RunActivity:billing.create_payment_intent") for s in found
    )
    assert under(found, create_pi, "StartChildWorkflow:BillingCycle")


async def test_the_trace_id_is_in_the_header_the_problem_body_and_the_log_line(client, spans):
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("prognet.api")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        response = await client.post("/v1/auth/login?token=query-secret", json={"email": "nobody"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    body = assert_problem(response, 422, "validation-failed")
    trace_id = trace_id_of(response)
    assert body["trace_id"] == trace_id
    # this request's server span (a stream or app of another test may still be answering in this process)
    [server] = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and format_trace_id(s.context.trace_id) == trace_id
    ]
    assert "query-secret" not in json.dumps(dict(server.attributes or {}))  # query strings stay out of traces
    assert (server.attributes or {})["http.target"] == "/v1/auth/login"
    [access] = [json.loads(line) for line in lines if json.loads(line)["msg"] == "request"]
    assert access["trace_id"] == trace_id and access["status"] == 422 and len(access["span_id"]) == 16


async def test_a_worker_activity_log_line_carries_the_trace_id_of_the_request(api, spans, temporal_settings):
    """The process's own log handler (prognet.logs, set up by configure_process): the activity that created the
    pending user logs a JSON line with the trace id the register response named in `traceparent`."""
    handler = configure_logging(temporal_settings)  # the one the API and the worker in this process share
    assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, JsonFormatter)
    out = io.StringIO()
    activity_log = logging.getLogger("activities.users")
    previous_stream, level = handler.setStream(out), activity_log.level
    activity_log.setLevel(logging.INFO)
    try:
        email = f"logged-{uuid.uuid4().hex[:10]}@example.com"
        response = await api.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert response.status_code == 202, response.text
        trace_id = trace_id_of(response)
        found = await wait_for_trace(spans, trace_id, "RunActivity:users.create_pending_user")
    finally:
        handler.setStream(previous_stream)
        activity_log.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    [created] = [e for e in lines if e["msg"] == "pending user created" and e["user_id"] == response.json()["user_id"]]
    assert created["trace_id"] == trace_id and created["logger"] == "activities.users"
    # the span it was logged in: the activity's own
    [activity] = [s for s in found if s.name == "RunActivity:users.create_pending_user"]
    assert created["span_id"] == format_span_id(activity.context.span_id)
    # Our code's lines only: the in-process SMTP sink stands in for the relay, and its own log (aiosmtpd's
    # `mail.log`, `prognet.smtp_sink`) names recipients, as a relay's does; the verification email, handed off in
    # the registration's first workflow task, can reach it within this window.
    relay = {"mail.log", "prognet.smtp_sink"}
    ours = [
        line
        for line in out.getvalue().splitlines()
        if not (line.startswith("{") and json.loads(line)["logger"] in relay)
    ]
    assert not [line for line in ours if email in line] and PASSWORD not in out.getvalue()


async def client_spans_of(client, spans: InMemorySpanExporter, body: dict, status: int) -> list[str]:
    response = await client.post("/v1/auth/login", json=body)
    assert response.status_code == status, response.text
    trace_id = trace_id_of(response)
    found = [s for s in spans.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id]
    assert not [s for s in found if "set_config" in json.dumps(dict(s.attributes or {}))]
    return [s.name for s in found if s.kind == SpanKind.CLIENT]


async def test_a_transaction_traces_its_statements_and_commit_not_its_begin_and_row_level_context(client, spans, user):
    wrong = {"email": user.email, "password": "not-the-right-one"}
    await client_spans_of(client, spans, wrong, 401)  # the app's first connection also traces the dialect set-up
    # the throttle, the account's lookup (a statement of its own), then the audit record's transaction
    assert await client_spans_of(client, spans, wrong, 401) == ["EVALSHA", "SELECT", "INSERT", "COMMIT;"]


async def test_a_login_costs_one_statement_before_the_hash_and_one_redis_and_one_sql_round_trip_after(
    client, spans, user
):
    unknown = {"email": "nobody@example.com", "password": "not-the-right-one"}
    assert await client_spans_of(client, spans, unknown, 401) == ["EVALSHA", "SELECT"]  # and the dummy hash
    right = {"email": user.email, "password": PASSWORD}
    await client_spans_of(client, spans, right, 200)  # the first one also upgrades the test's cheap hash
    throttle, lookup, pipeline, event = await client_spans_of(client, spans, right, 200)
    assert (throttle, lookup, event) == ("EVALSHA", "SELECT", "INSERT")
    # one pipeline: the throttle's counters settle (ZREM, DEL) and the session is created (HSET, SADD)
    assert {"ZREM", "DEL", "HSET", "SADD"} <= set(pipeline.split())

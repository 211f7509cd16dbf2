"""The Prometheus series ProgNetwork exposes, in one place (the README's metrics table is `METRICS_TABLE`).

Labels are low-cardinality names from the code (saga type, route template, state, Stripe's decline code,
circuit name): never a user id, an email address, a tenant id or a raw path.
The table of every series, for the README, is `METRICS_TABLE` (built from `SERIES`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SERIES: list[tuple[str, str, str, str, str]] = [  # series, type, labels, exposed by, meaning
    (
        "`prognet_http_requests_total`",
        "counter",
        "`method`, `route`, `status_class`",
        "API",
        "requests by route template (`/v1/tenants/{tenant_id}`) and `2xx`…`5xx`",
    ),
    (
        "`prognet_http_request_duration_seconds`",
        "histogram",
        "`method`, `route`, `status_class`",
        "API",
        "request latency",
    ),
    (
        "`prognet_logins_total`",
        "counter",
        "`outcome` (`success`, `failure`, `throttled`)",
        "API",
        "login attempts",
    ),
    (
        "`prognet_relay_lag_seconds`",
        "gauge",
        "`quantile` (`last`, `p50`, `p99`)",
        "API (from Redis `relay:stats`)",
        "outbox → stream lag",
    ),
    (
        "`prognet_relay_published_events`",
        "gauge",
        "—",
        "API (from Redis `relay:stats`)",
        "events the relay has published",
    ),
    (
        "`prognet_relay_republished_events`",
        "gauge",
        "—",
        "API (from Redis `relay:stats`)",
        "events published again because Redis lost them after acknowledging (restart from an older state)",
    ),
    (
        "`prognet_circuit_state`",
        "gauge",
        "`circuit`",
        "API (from Redis)",
        "0 closed, 1 half-open, 2 open",
    ),
    (
        "`prognet_saga_started_total`",
        "counter",
        "`saga`",
        "worker",
        "sagas started",
    ),
    (
        "`prognet_saga_completed_total`",
        "counter",
        "`saga`",
        "worker",
        "sagas that did all their steps",
    ),
    (
        "`prognet_saga_compensated_total`",
        "counter",
        "`saga`",
        "worker",
        "sagas unwound by their compensations",
    ),
    (
        "`prognet_saga_failed_total`",
        "counter",
        "`saga`",
        "worker",
        "sagas that failed past their pivot (or were rejected)",
    ),
    (
        "`prognet_saga_awaiting_operator_total`",
        "counter",
        "`saga`",
        "worker",
        "times a saga parked for an operator",
    ),
    (
        "`prognet_compensation_failures_total`",
        "counter",
        "`saga`, `step`",
        "worker",
        "compensations that failed after their retries",
    ),
    (
        "`prognet_emails_total`",
        "counter",
        "`state`",
        "worker",
        "email state changes (queued, sent, deferred, dead_lettered, …)",
    ),
    (
        "`prognet_payments_succeeded_total`",
        "counter",
        "—",
        "worker",
        "charges Stripe accepted",
    ),
    (
        "`prognet_payments_declined_total`",
        "counter",
        "`decline_code`",
        "worker",
        "charges Stripe declined",
    ),
    (
        "`prognet_circuit_transitions_total`",
        "counter",
        "`circuit`, `state`",
        "worker",
        "circuit state changes (counted by the process that made them)",
    ),
    (
        "`prognet_circuit_rejected_total`",
        "counter",
        "`circuit`",
        "worker",
        "calls failed fast by an open circuit",
    ),
]
METRICS_TABLE = "\n".join(
    ["| series | type | labels | exposed by | meaning |", "|---|---|---|---|---|"]
    + [f"| {' | '.join(row)} |" for row in SERIES]
)

# --- API
HTTP_REQUESTS = Counter("prognet_http_requests", "HTTP requests by route template", ["method", "route", "status_class"])
HTTP_LATENCY = Histogram(
    "prognet_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route", "status_class"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LOGINS = Counter("prognet_logins", "Login attempts by outcome", ["outcome"])
RELAY_LAG = Gauge("prognet_relay_lag_seconds", "Outbox to stream lag (relay:stats)", ["quantile"])
RELAY_PUBLISHED = Gauge("prognet_relay_published_events", "Events the relay has published (relay:stats)")
RELAY_REPUBLISHED = Gauge(
    "prognet_relay_republished_events", "Events the relay published again after Redis lost them (relay:stats)"
)
CIRCUIT_STATE = Gauge("prognet_circuit_state", "Circuit state: 0 closed, 1 half-open, 2 open", ["circuit"])
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}

# --- worker
SAGA_STARTED = Counter("prognet_saga_started", "Sagas started", ["saga"])
SAGA_OUTCOMES = {
    status: Counter(f"prognet_saga_{status}", f"Sagas that became {status}", ["saga"])
    for status in ("completed", "compensated", "failed", "awaiting_operator")
}
COMPENSATION_FAILURES = Counter(
    "prognet_compensation_failures", "Compensations that failed after their retries", ["saga", "step"]
)
EMAILS = Counter("prognet_emails", "Email state changes", ["state"])
PAYMENTS_SUCCEEDED = Counter("prognet_payments_succeeded", "Charges Stripe accepted")
PAYMENTS_DECLINED = Counter("prognet_payments_declined", "Charges Stripe declined", ["decline_code"])
CIRCUIT_TRANSITIONS = Counter("prognet_circuit_transitions", "Circuit state changes", ["circuit", "state"])
CIRCUIT_REJECTED = Counter("prognet_circuit_rejected", "Calls failed fast by an open circuit", ["circuit"])


def saga_status(saga: str, status: str) -> None:
    """A saga entered `status` (called by the worker, outside replay)."""
    if status == "started":
        SAGA_STARTED.labels(saga).inc()
    elif status in SAGA_OUTCOMES:
        SAGA_OUTCOMES[status].labels(saga).inc()


def compensation_failed(saga: str, step: str) -> None:
    COMPENSATION_FAILURES.labels(saga, step).inc()


def status_class(status: int) -> str:
    return f"{status // 100}xx"

"""The API's Prometheus metrics: request counts and latencies by route template, and `GET /metrics`.

The route label is the matched route's template (`/v1/tenants/{tenant_id}`), never the raw path: ids in
paths would make one series per tenant (and leak them). A request no route matched is `unmatched`.
`/metrics` also reports what all processes share through Redis: the relay's lag and the circuits' states.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prognet.circuit import circuit_states
from prognet.metrics import (
    CIRCUIT_STATE,
    CIRCUIT_STATE_VALUES,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    RELAY_LAG,
    RELAY_PUBLISHED,
    RELAY_REPUBLISHED,
    status_class,
)

log = logging.getLogger("prognet.api")

RELAY_STATS_KEY = "relay:stats"  # relay.relay.STATS_KEY (the relay package is not the API's to import)
_RELAY_LAG_FIELDS = {"last": "last_lag_ms", "p50": "lag_p50_ms", "p99": "lag_p99_ms"}

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    await _refresh_shared(request)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _refresh_shared(request: Request) -> None:
    redis = request.app.state.redis
    try:
        stats = await redis.hgetall(RELAY_STATS_KEY)
        for quantile, field in _RELAY_LAG_FIELDS.items():
            if field in stats:
                RELAY_LAG.labels(quantile).set(float(stats[field]) / 1000)
        if "published" in stats:
            RELAY_PUBLISHED.set(float(stats["published"]))
        if "republished" in stats:
            RELAY_REPUBLISHED.set(float(stats["republished"]))
        for name, state in (await circuit_states(redis)).items():
            CIRCUIT_STATE.labels(name).set(CIRCUIT_STATE_VALUES.get(state, 0))
    except (RedisError, OSError) as exc:  # the HTTP series are still worth serving
        log.warning("metrics: Redis unreachable, shared gauges not refreshed: %s", exc)


class RequestMetrics:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streaming responses such as SSE)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (scope["method"], route, status_class(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_LATENCY.labels(*labels).observe(time.perf_counter() - started)

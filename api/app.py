"""The FastAPI application. Run with `uvicorn api.app:create_served_app --factory` (what `prognet api` does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from api.body_guard import MAX_BODY_BYTES, BodySizeLimit
from api.docs import install_docs
from api.fanout import Fanout
from api.jwt_tokens import AccessTokenCodec
from api.login_throttle import DeviceCookies, LoginThrottle
from api.metrics import RequestMetrics
from api.metrics import router as metrics_router
from api.problems import DEPENDENCY_OUTAGE_RESPONSE, install_problem_handlers
from api.read_models import ReadModels
from api.request_log import AccessLog
from api.routers import (
    admin,
    audit,
    auth,
    codec,
    email_change,
    emails,
    event_stream,
    health,
    incidents,
    invitation_accept,
    invitations,
    me,
    members,
    pages,
    plans,
    registration,
    signup,
    stripe_webhooks,
    subscriptions,
    tenants,
    webhooks,
    workflows,
)
from api.sessions import SessionStore
from api.sse import StreamCap
from api.temporal_client import TemporalConnector
from models.db import make_engine
from models.retry_policies import SagaRetryPolicies
from prognet import telemetry
from prognet.gc_pauses import freeze_startup_objects
from prognet.payload_codec import codec_from, converter_for
from prognet.settings import Settings, get_settings

DESCRIPTION = """\
ProgNetwork's HTTP API. Commands start, signal or update durable Temporal workflows (sagas); queries read
PostgreSQL or ask a workflow for its saga state. Errors are RFC 9457 `application/problem+json`.
Authenticate with `Authorization: Bearer <access token>` from `POST /v1/auth/login`.
"""

TAGS = [
    {"name": "auth", "description": "Registration, email verification, login, token refresh, logout."},
    {"name": "me", "description": "The caller's own account: profile, password, email address (a saga)."},
    {"name": "audit", "description": "The audit trail: a tenant's events (owners and admins) and your own."},
    {
        "name": "tenants",
        "description": "Organisations: provisioning saga, status, members and roles. Another "
        "tenant's resources answer 404, exactly like missing ones.",
    },
    {"name": "invitations", "description": "Invite by email (a saga that waits for acceptance), list, revoke, accept."},
    {
        "name": "emails",
        "description": "Delivery tracking of the tenant's emails (owners and admins): state, "
        "attempts, last SMTP reply, counts by state and template.",
    },
    {"name": "workflows", "description": "Progress of the caller's own sagas (also as a server-sent event stream)."},
    {
        "name": "events",
        "description": "Domain events as server-sent events: your own, or a tenant's; resumable with Last-Event-ID.",
    },
    {
        "name": "admin",
        "description": "Platform operators only (`prognet admin grant EMAIL`): all tenants' emails, "
        "dead letters (retry, discard), the suppression list. Anyone else gets 404, "
        "as for an unknown path.",
    },
    {
        "name": "codec",
        "description": "The codec server of the Temporal Web UI and CLI: decrypts (and encrypts) workflow payloads "
        "for platform operators. Anyone else gets 404, as for an unknown path.",
    },
    {"name": "plans", "description": "The plan catalogue (configuration in the repo: models/plans.json)."},
    {
        "name": "billing",
        "description": "Subscriptions (a workflow each, billed by a Temporal Schedule), plan and "
        "payment-method changes, cancellation, invoices.",
    },
    {"name": "webhooks", "description": "Stripe's signed event deliveries (not for people)."},
    {"name": "health", "description": "Liveness and readiness probes (not versioned)."},
]


def _redis_url(settings: Settings) -> str:
    return settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"


MAIN_REDIS_MAX_CONNECTIONS = 100  # redis-py's default size; requests hold a connection only per command


def _redis_client(settings: Settings, max_connections: int) -> Redis:
    pool = BlockingConnectionPool.from_url(
        _redis_url(settings),
        max_connections=max_connections,
        timeout=2,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it disconnects the pool


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (postgresql+asyncpg://user:pass@host:port/db)")
    # A request waits at most 10 s for a pooled connection (then 503), not SQLAlchemy's 30 s.
    engine = make_engine(settings.database_url, hide_parameters=True, pool_timeout=10)
    # Blocking pools: a burst of requests beyond a pool's size waits up to 2 s for a connection, where redis-py's
    # default pool fails at once (MaxConnectionsError, a 503). One quick retry reconnects a pooled connection that
    # died with a Redis restart; more would only delay the 503 while Redis is really down.
    redis = _redis_client(settings, MAIN_REDIS_MAX_CONNECTIONS)
    # Streams read Redis through a pool of their own: however many are open, ordinary requests (logins, sessions,
    # throttles) never wait behind them.
    sse_redis = _redis_client(settings, settings.sse_redis_max_connections)
    # Queries read here (a replica, if DATABASE_READ_URL names one); commands never do.
    read_engine = make_engine(settings.database_read_url) if settings.database_read_url else engine
    cache = (
        Redis.from_url(settings.cache_redis_url, decode_responses=True, socket_connect_timeout=1, socket_timeout=1)
        if settings.cache_redis_url
        else redis
    )
    payload_codec = codec_from(settings)  # the Temporal client's codec, also served to the Web UI at /codec
    temporal = TemporalConnector(
        settings.temporal_target,
        settings.temporal_namespace,
        converter_for(payload_codec),
        retry_policies=SagaRetryPolicies.model_validate(settings.saga_retry_policies()),
        tracing=not settings.bench_telemetry_off,
    )
    temporal.start_background_connect()
    app.state.engine = engine
    app.state.read_models = ReadModels(read_engine, engine, cache, settings)
    app.state.redis = redis
    app.state.temporal = temporal
    app.state.payload_codec = payload_codec
    app.state.sessions = SessionStore(redis, settings.refresh_token_ttl_seconds)
    app.state.sse_redis = sse_redis
    app.state.sse_sessions = SessionStore(sse_redis, settings.refresh_token_ttl_seconds)  # streams' session checks
    app.state.sse_cap = StreamCap(settings.sse_max_streams_per_process)
    app.state.sse_fanout = Fanout(sse_redis)  # one reader per event stream, shared by this process's clients
    # the same client as the session store's: a login settles its throttle and creates its session in one MULTI
    app.state.login_throttle = LoginThrottle(redis, settings.login_max_failures, settings.login_failure_window_seconds)
    app.state.device_cookies = DeviceCookies(settings.derived_key("device-cookie"))
    app.state.access_tokens = AccessTokenCodec(settings.derived_key("jwt"), settings.access_token_ttl_seconds)
    try:
        yield
    finally:
        await temporal.close()
        if cache is not redis:
            await cache.aclose()
        await redis.aclose()
        await app.state.sse_fanout.close()
        await sse_redis.aclose()
        if read_engine is not engine:
            await read_engine.dispose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    telemetry.configure_process(telemetry.API, settings)
    app = FastAPI(
        title="ProgNetwork API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,  # install_docs serves both offline
    )
    app.state.settings = settings
    install_problem_handlers(app)
    install_docs(app)
    for module in (
        auth,
        registration,
        me,
        tenants,
        members,
        invitations,
        invitation_accept,
        emails,
        event_stream,
        webhooks,
        workflows,
        admin,
        incidents,
        audit,
        email_change,
        health,
        codec,
    ):
        app.include_router(module.router, responses=DEPENDENCY_OUTAGE_RESPONSE)
    for module in (plans, pages):  # configuration and static pages: no dependency to be down
        app.include_router(module.router)
    app.include_router(stripe_webhooks.router, responses=DEPENDENCY_OUTAGE_RESPONSE)
    app.include_router(subscriptions.router, responses=DEPENDENCY_OUTAGE_RESPONSE)
    app.include_router(signup.router, responses=DEPENDENCY_OUTAGE_RESPONSE)
    app.include_router(metrics_router)  # GET /metrics, out of the OpenAPI schema
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(codec.CodecCors, origins=settings.codec_origins)
    app.add_middleware(AccessLog)
    if settings.bench_telemetry_off:  # development only: what `prognet bench --only telemetry` compares against
        return app
    app.add_middleware(RequestMetrics)
    # the server span wraps every middleware and error handler: logs and problem bodies carry its trace id
    # except liveness probes: a span per probe is noise in the traces, and its cost lands on the probed loop
    FastAPIInstrumentor.instrument_app(
        app,
        server_request_hook=telemetry.strip_query,
        exclude_spans=["receive", "send"],
        excluded_urls=r"/healthz(\?|$)",
    )
    return app


def create_served_app() -> FastAPI:
    """`prognet api`'s app (uvicorn's factory): `create_app`, then what startup made is left out of the garbage
    collector's full passes (prognet/gc_pauses.py)."""
    app = create_app()
    freeze_startup_objects()
    return app

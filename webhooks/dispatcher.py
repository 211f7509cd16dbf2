"""The webhook dispatcher: tenant events from `events:all` → one `webhook-{delivery_id}` workflow per matching
endpoint.

`WebhookDispatcher.dispatch(event)` is the handler (idempotent: the workflow id is a business key of endpoint
and event, started with a reject-duplicate policy, so an event read twice is still one delivery); `run_dispatcher`
is the loop around it: a Redis consumer group (`webhooks-dispatcher`) on `events:all`, XREADGROUP, and XACK only
once every delivery of the entry was started. An entry whose dispatch failed (Temporal or PostgreSQL down) stays
pending and is read again after a pause; entries a dead consumer left pending are claimed after CLAIM_IDLE.
The group starts at the stream's end when first created: an endpoint only ever receives events that occurred
after it was created (checked per event, so a backlog never floods a new endpoint).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from models.contracts import WebhookDeliveryInput, WebhookEvent
from models.db import make_engine, transaction
from models.event_stream import ALL_EVENTS, StreamEvent, backbone_client
from models.names import (
    SA_TENANT_ID,
    WEBHOOK_DELIVERY_WORKFLOW,
    WEBHOOK_TASK_QUEUE,
    webhook_delivery_id,
    webhook_workflow_id,
)
from models.tables import WebhookEndpoint
from prognet import telemetry
from prognet.payload_codec import data_converter
from prognet.settings import Settings
from webhooks.event_filter import matches

log = logging.getLogger("prognet.webhooks")

GROUP = "webhooks-dispatcher"
BATCH = 100
BLOCK_MS = 5000
CLAIM_IDLE_MS = 60_000
BACKOFF_SECONDS = (0.5, 1, 2, 5, 10)


class WebhookDispatcher:
    def __init__(self, engine: AsyncEngine, client: Client, task_queue: str = WEBHOOK_TASK_QUEUE) -> None:
        self.engine = engine
        self.client = client
        self.task_queue = task_queue

    async def dispatch(self, event: StreamEvent) -> list[str]:
        """Start the deliveries of one event; the workflow ids (started now or before)."""
        if event.tenant_id is None:
            return []  # platform and user events belong to no tenant's endpoints
        async with transaction(self.engine, tenant_id=event.tenant_id) as db:
            endpoints = (
                await db.exec(
                    select(WebhookEndpoint).where(
                        WebhookEndpoint.tenant_id == event.tenant_id,
                        col(WebhookEndpoint.enabled).is_(True),
                        WebhookEndpoint.created_at <= event.occurred_at,
                    )
                )
            ).all()
        started = []
        for endpoint in endpoints:
            if matches(endpoint.event_types, event.type):
                started.append(await self._start(endpoint.id, event))
        return started

    async def _start(self, endpoint_id: uuid.UUID, event: StreamEvent) -> str:
        assert event.tenant_id is not None
        delivery_id = webhook_delivery_id(endpoint_id, event.event_id)
        workflow_id = webhook_workflow_id(delivery_id)
        request = WebhookDeliveryInput(
            delivery_id=delivery_id,
            endpoint_id=endpoint_id,
            tenant_id=event.tenant_id,
            event=WebhookEvent(
                id=event.event_id,
                type=event.type,
                version=event.version,
                occurred_at=event.occurred_at,
                tenant_id=event.tenant_id,
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                payload=event.payload,
            ),
        )
        try:
            await self.client.start_workflow(
                WEBHOOK_DELIVERY_WORKFLOW,
                request,
                id=workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes([SearchAttributePair(SA_TENANT_ID, str(event.tenant_id))]),
                static_summary=f"Webhook {event.type} → endpoint {endpoint_id}",
            )
        except WorkflowAlreadyStartedError:
            pass  # the event was read before: this delivery exists (running, or finished)
        return workflow_id


class StreamConsumer:
    """The consumer-group loop around a handler; small on purpose, until the shared consumer framework lands."""

    def __init__(self, redis: Redis, dispatcher: WebhookDispatcher, consumer: str | None = None) -> None:
        self.redis = redis
        self.dispatcher = dispatcher
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        # Our own pending entries are read only when there can be some (at start, after a failure), and other
        # consumers' are claimed once per half CLAIM_IDLE: every round asking both cost two Redis calls per event.
        self._own_pending = True
        self._next_claim = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(ALL_EVENTS, GROUP, id="$", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def handle(self, entries: list) -> int:
        """Dispatch entries in order and acknowledge them in one XACK; stops at the first that fails (it and the
        rest stay pending, to be read again), after acknowledging the ones before it."""
        done: list[Any] = []
        dispatched = 0
        try:
            for entry_id, fields in entries:
                if fields is None:  # deleted from the stream (trimmed) while pending: nothing left to dispatch
                    done.append(entry_id)
                    continue
                try:
                    event = StreamEvent.from_fields(fields)
                except (KeyError, ValueError) as err:
                    log.error("unreadable stream entry %s skipped: %s", entry_id, err)
                    done.append(entry_id)
                    continue
                await self.dispatcher.dispatch(event)
                done.append(entry_id)
                dispatched += 1
        except BaseException:
            self._own_pending = True
            raise
        finally:
            if done:
                await self.redis.xack(ALL_EVENTS, GROUP, *done)
        return dispatched

    async def run_once(self, block_ms: int = BLOCK_MS) -> int:
        """Our pending entries first (a dispatch that failed, or a restart), then claimed ones, then new ones."""
        entries: list = []
        if self._own_pending:
            pending: Any = await self.redis.xreadgroup(GROUP, self.consumer, {ALL_EVENTS: "0"}, count=BATCH)
            entries = pending[0][1] if pending else []
            self._own_pending = len(entries) == BATCH  # a full batch: there may be more
        if not entries and time.monotonic() >= self._next_claim:
            claimed: Any = await self.redis.xautoclaim(
                ALL_EVENTS, GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=BATCH
            )
            entries = claimed[1]
            if len(entries) < BATCH:  # all claimed: look again in half the idle time
                self._next_claim = time.monotonic() + CLAIM_IDLE_MS / 2000
        if not entries:
            fresh: Any = await self.redis.xreadgroup(
                GROUP, self.consumer, {ALL_EVENTS: ">"}, count=BATCH, block=block_ms
            )
            entries = fresh[0][1] if fresh else []
        return await self.handle(entries)

    async def run(self, stop: asyncio.Event) -> None:
        failures = 1  # create the group first (and again after any failure: Redis may have lost it)
        while not stop.is_set():
            try:
                if failures:
                    self._own_pending = True
                    await self.ensure_group()
                await self.run_once()
                failures = 0
            except (RedisError, OSError, RPCError, TimeoutError, ConnectionError) as err:
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("webhook dispatch paused %.1f s: %s", delay, type(err).__name__)
                await _sleep_or_stop(stop, delay)
            except Exception:
                # e.g. PostgreSQL down (SQLAlchemy wraps it): the entry stays pending, we try again shortly
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.exception("webhook dispatch failed; retrying in %.1f s", delay)
                await _sleep_or_stop(stop, delay)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_dispatcher(settings: Settings, stop: asyncio.Event) -> None:
    """`prognet webhooks-dispatcher`: until `stop` is set."""
    if not settings.database_url or not settings.redis_url:
        raise SystemExit("error: the webhook dispatcher needs DATABASE_URL and REDIS_URL")
    telemetry.configure_process(telemetry.WEBHOOKS_DISPATCHER, settings)
    engine = make_engine(settings.database_url)
    redis = backbone_client(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5, socket_connect_timeout=5)
    client = None
    while client is None and not stop.is_set():
        try:
            # the same converter as every other client: delivery inputs are encrypted like all payloads
            client = await Client.connect(
                settings.temporal_target,
                namespace=settings.temporal_namespace,
                data_converter=data_converter(settings),
                interceptors=[] if settings.bench_telemetry_off else [TracingInterceptor()],
            )
        except RuntimeError as err:
            log.warning("temporal unreachable (%s); retrying", err)
            await _sleep_or_stop(stop, 2)
    try:
        if client is not None:
            log.info("webhook dispatcher reading %s as group %s", ALL_EVENTS, GROUP)
            await StreamConsumer(redis, WebhookDispatcher(engine, client)).run(stop)
    finally:
        await redis.aclose()
        await engine.dispose()
    log.info("webhook dispatcher stopped")

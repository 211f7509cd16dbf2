"""Section 5 of `prognet bench`: the event backbone (outbox → relay → `events:all` → projector), and reads.

Setup (not timed): bench tenants as the database owner (user, tenants, owner memberships, with their
`tenant.created`/`member.added` events so the projector builds their read-model rows), and one login over HTTP
for a bearer token (sections 6 and 7 reuse them).

Throughput and lag: N `invoice.payment_failed` rows inserted into `domain_events` by one writer, in transactions
of `batch` rows, spread over the bench tenants (so over the projector's partitions). The commit time of each
transaction is taken when its COMMIT returns. An event reaches the stream at its `events:all` entry id (Redis's
own millisecond clock at XADD) and the read model at `rm_applied.applied_at` (the projector's transaction start,
a few ms before its commit): both read back after the run, so nothing polls while it runs. The stack's other
consumers (cache invalidator, webhook dispatcher) read the same events meanwhile, as they would in production.
A burst's lag is mostly its own backlog, so the lags are measured again without one: PACED_EVENTS events, one
per transaction, PACED_PAUSE apart, once every consumer group has caught up (`quiesce`, also run before
sections 6 and 7).

Baseline, same run, same Redis: a bare XADD loop of as many entries with the same 12 fields, to two streams per
event as the relay writes (`events:all` and the tenant's), pipelined in the relay's batch size.

Reads: `GET /v1/tenants/{id}` one at a time, checked by its `Read-Source` header: from the cache; from the read
model (the cache key deleted before each request, outside the timing); from the primary (a tenant with no
read-model row).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

BENCH_EVENT = "invoice.payment_failed"  # a tenant event any projection, consumer or webhook endpoint would see
RELAY_BATCH = 500  # the relay's default batch (Settings.relay_batch_size): the baseline's pipeline size

PACED_EVENTS, PACED_PAUSE = 100, 0.05  # the lag without a backlog: one event per transaction, 20 a second

INSERT_EVENT = """
INSERT INTO domain_events (event_id, type, version, aggregate_type, aggregate_id, tenant_id, payload, occurred_at)
VALUES ($1, $2, 1, 'invoice', $3, $4, $5::jsonb, now())
"""


@dataclass
class BenchTenants:
    user_id: uuid.UUID
    token: str  # a bearer token of the owner of every bench tenant
    tenant_ids: list[uuid.UUID]  # with read-model rows
    primary_only: uuid.UUID  # a tenant without a read-model row: its reads come from the primary
    hooks_tenant: uuid.UUID  # section 7's, kept apart so other sections' events start no deliveries
    owner_dsn: str


@dataclass
class Committed:
    """When each event's transaction committed (time.time()), and when the first one started."""

    started: float
    at: dict[uuid.UUID, float] = field(default_factory=dict)

    @property
    def last(self) -> float:
        return max(self.at.values())


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank, rounding down) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:7.1f} ms   p99 {pct(values, 0.99) * 1000:7.1f} ms"


def entry_seconds(entry_id: str | bytes) -> float:
    """The Redis clock (seconds) at which an auto-id stream entry was added."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000


def payload(i: int) -> str:
    return json.dumps(
        {
            "number": i,
            "attempt": 1,
            "decline_code": "card_declined",
            "payment_intent_id": f"pi_bench_{i}",
            "next_retry_at": None,
        }
    )


# --- setup -------------------------------------------------------------------------------------------------------


async def create_tenants(stack, http: httpx.AsyncClient, count: int) -> BenchTenants:
    from models.db import make_engine, transaction
    from models.events import record_event
    from models.tables import Membership, Tenant, User
    from prognet.passwords import hasher
    from prognet.settings import Settings
    from prognet_dev.bench import BENCH_PASSWORD
    from relay.relay import plain_dsn

    run = uuid.uuid4().hex[:8]
    user_id, email = uuid.uuid4(), f"events-{run}@example.com"
    tenant_ids = [uuid.uuid4() for _ in range(count)]
    primary_only, hooks_tenant = uuid.uuid4(), uuid.uuid4()
    engine = make_engine(stack.migration_database_url)  # the owner: a superuser, so no tenant context is needed
    try:
        async with transaction(engine) as db:
            digest = hasher(Settings()).hash(BENCH_PASSWORD)
            db.add(User(id=user_id, email=email, password_hash=digest, status="active"))
            await db.flush()
            projected = [*tenant_ids, hooks_tenant]
            for i, tid in enumerate([*projected, primary_only]):
                slug = f"ev-{run}-{i}"
                db.add(
                    Tenant(
                        id=tid,
                        name=f"Events bench {i}",
                        slug=slug,
                        status="active",
                        created_by=user_id,
                        activated_at=datetime.now(UTC) - timedelta(minutes=1),
                    )
                )
                await db.flush()
                db.add(Membership(tenant_id=tid, user_id=user_id, role="owner"))
                if tid in projected:
                    record_event(
                        db,
                        "tenant.created",
                        "tenant",
                        tid,
                        {"slug": slug, "name": f"Events bench {i}", "created_by": str(user_id)},
                        tenant_id=tid,
                    )
                    record_event(db, "tenant.provisioned", "tenant", tid, tenant_id=tid)
                    record_event(db, "member.added", "membership", user_id, {"role": "owner"}, tenant_id=tid)
    finally:
        await engine.dispose()
    r = await http.post("/v1/auth/login", json={"email": email, "password": BENCH_PASSWORD})
    r.raise_for_status()
    tenants = BenchTenants(
        user_id=user_id,
        token=r.json()["access_token"],
        tenant_ids=tenant_ids,
        primary_only=primary_only,
        hooks_tenant=hooks_tenant,
        owner_dsn=plain_dsn(stack.migration_database_url),
    )
    conn = await asyncpg.connect(tenants.owner_dsn)
    try:  # their read-model rows exist before anything reads them
        await wait_until(
            lambda: conn.fetchval(
                "SELECT count(*) = $2 FROM rm_tenant_overview WHERE tenant_id = ANY($1) AND member_count > 0",
                projected,
                len(projected),
            ),
            60,
            "the projector to build the bench tenants' read models",
        )
    finally:
        await conn.close()
    return tenants


async def wait_until(check, timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(every)


async def quiesce(redis_url: str, timeout: float = 180) -> None:
    """Wait until every consumer group on `events:all` has read and acked everything (the stack is idle again), so
    one section's backlog does not share the cores with the next one's figures."""
    from models.event_stream import ALL_EVENTS

    redis = Redis.from_url(redis_url, decode_responses=True)

    async def idle() -> bool:
        tail = (await redis.xinfo_stream(ALL_EVENTS))["last-generated-id"]
        groups = await redis.xinfo_groups(ALL_EVENTS)
        return all(g["last-delivered-id"] == tail and not g["pending"] for g in groups)

    try:
        await wait_until(idle, timeout, "the stream's consumers to catch up", every=0.5)
    finally:
        await redis.aclose()


async def insert_events(
    conn: asyncpg.Connection, tenant_ids: list[uuid.UUID], n: int, batch: int, pause: float = 0.0
) -> Committed:
    """n bench events, `batch` per transaction, round-robin over the tenants; `pause` seconds between commits."""
    committed = Committed(started=time.time())
    for first in range(0, n, batch):
        rows = [
            (uuid.uuid4(), BENCH_EVENT, str(uuid.uuid4()), tenant_ids[i % len(tenant_ids)], payload(i))
            for i in range(first, min(n, first + batch))
        ]
        async with conn.transaction():
            await conn.executemany(INSERT_EVENT, rows)
        now = time.time()
        committed.at.update((row[0], now) for row in rows)
        if pause:
            await asyncio.sleep(pause)
    return committed


# --- 5. events -----------------------------------------------------------------------------------------------------


async def bare_xadd(redis: Redis, n: int) -> float:
    """Seconds for n events' XADDs (12 fields, two streams each, as the relay writes) pipelined RELAY_BATCH a time."""
    from models.event_stream import StreamEvent

    streams = [f"bench:xadd:{uuid.uuid4().hex[:8]}:{k}" for k in range(2)]
    tenant = uuid.uuid4()
    fields: Any = StreamEvent(
        seq=1,
        event_id=uuid.uuid4(),
        type=BENCH_EVENT,
        version=1,
        aggregate_type="invoice",
        aggregate_id=str(uuid.uuid4()),
        tenant_id=tenant,
        user_id=None,
        actor_id=None,
        workflow_id=None,
        occurred_at=datetime.now(UTC),
        payload=json.loads(payload(1)),
    ).to_fields()
    start = time.perf_counter()
    for first in range(0, n, RELAY_BATCH):
        async with redis.pipeline(transaction=True) as pipe:
            for i in range(first, min(n, first + RELAY_BATCH)):
                fields["seq"] = str(i)
                for stream in streams:
                    pipe.xadd(stream, fields, maxlen=100_000, approximate=True)
            await pipe.execute()
    seconds = time.perf_counter() - start
    await redis.delete(*streams)
    return seconds


@dataclass
class FlowRun:
    n: int
    insert_rate: float
    stream_rate: float
    model_rate: float
    to_stream: list[float]
    to_model: list[float]


async def event_flow(redis: Redis, tenants: BenchTenants, n: int, batch: int, pause: float = 0.0) -> FlowRun:
    """Insert n events; timed until the projector applied the last one. Lags read back from Redis and rm_applied."""
    from models.event_stream import ALL_EVENTS
    from workers.consumer import PARKED

    tail: Any = await redis.xrevrange(ALL_EVENTS, count=1)
    after = tail[0][0] if tail else "0-0"
    conn = await asyncpg.connect(tenants.owner_dsn)
    try:
        committed = await insert_events(conn, tenants.tenant_ids, n, batch, pause)
        ids = list(committed.at)
        applied_sql = (
            "SELECT event_id, extract(epoch FROM applied_at)::float8 AS at FROM rm_applied "
            "WHERE projection = 'tenant_overview' AND event_id = ANY($1)"
        )

        async def all_applied() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM rm_applied WHERE projection = 'tenant_overview' AND event_id = ANY($1)", ids
            ) == len(ids)

        try:
            await wait_until(all_applied, max(120.0, n / 10), f"the projector to apply {n} events", every=0.2)
        except TimeoutError as exc:
            applied_now = await conn.fetchval(
                "SELECT count(*) FROM rm_applied WHERE projection = 'tenant_overview' AND event_id = ANY($1)", ids
            )
            raise TimeoutError(f"{exc}: {applied_now} applied, {await redis.xlen(PARKED)} entries parked") from None
        applied = {row["event_id"]: row["at"] for row in await conn.fetch(applied_sql, ids)}
    finally:
        await conn.close()
    streamed: dict[uuid.UUID, float] = {}
    while len(streamed) < n:
        entries: Any = await redis.xrange(ALL_EVENTS, min=f"({_text(after)}", count=1000)
        if not entries:
            raise RuntimeError(f"only {len(streamed)} of {n} bench events are on {ALL_EVENTS}")
        for entry_id, fields in entries:
            event_id = uuid.UUID(_text(fields[b"event_id"]))
            if event_id in committed.at:
                streamed[event_id] = entry_seconds(entry_id)
        after = entries[-1][0]
    return FlowRun(
        n=n,
        insert_rate=n / (committed.last - committed.started),
        stream_rate=n / (max(streamed.values()) - committed.started),
        model_rate=n / (max(applied.values()) - committed.started),
        to_stream=[streamed[e] - committed.at[e] for e in ids],
        to_model=[applied[e] - committed.at[e] for e in ids],
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def timed_reads(
    http: httpx.AsyncClient, redis: Redis, tenants: BenchTenants, tenant_id: uuid.UUID, n: int, source: str
) -> list[float]:
    """n sequential GET /v1/tenants/{id}, each answered from `source` (checked); the cache key is deleted before
    each request (untimed) when the source is not the cache."""
    from models.read_models import cache_key

    headers = {"Authorization": f"Bearer {tenants.token}"}
    latencies = []
    for _ in range(n):
        if source != "cache":
            await redis.delete(cache_key("tenant_overview", tenant_id))
        start = time.perf_counter()
        r = await http.get(f"/v1/tenants/{tenant_id}", headers=headers)
        latencies.append(time.perf_counter() - start)
        r.raise_for_status()
        if r.headers.get("Read-Source") != source:
            raise RuntimeError(f"GET /v1/tenants/{tenant_id} came from {r.headers.get('Read-Source')}, not {source}")
    return latencies


async def bench_events(stack, http: httpx.AsyncClient, tenants: BenchTenants, args) -> list[str]:
    assert stack.redis_url
    redis = Redis.from_url(stack.redis_url)
    try:
        tid = tenants.tenant_ids[0]
        await timed_reads(http, redis, tenants, tid, 20, "read-model")  # warm-up: connections, plans, the cache
        await timed_reads(http, redis, tenants, tid, 1, "cache")
        model = await timed_reads(http, redis, tenants, tid, args.reads, "read-model")
        await timed_reads(http, redis, tenants, tid, 1, "read-model")  # fills the cache again
        cached = await timed_reads(http, redis, tenants, tid, args.reads, "cache")
        primary = await timed_reads(http, redis, tenants, tenants.primary_only, args.reads, "primary")

        await event_flow(redis, tenants, 50, args.event_batch)  # warm-up
        await quiesce(stack.redis_url)
        t_xadd = await bare_xadd(redis, args.events)
        flow = await event_flow(redis, tenants, args.events, args.event_batch)
        await quiesce(stack.redis_url)  # the other consumers' backlog of the burst
        paced = await event_flow(redis, tenants, PACED_EVENTS, 1, PACED_PAUSE)
    finally:
        await redis.aclose()
    xadd_rate = args.events / t_xadd
    return [
        f"5. events ({args.events} `{BENCH_EVENT}` rows, {args.event_batch} per transaction, one writer, "
        f"{len(tenants.tenant_ids)} tenants)",
        f"   bare XADD, 12 fields, 2 streams/event, pipelined {RELAY_BATCH} : {xadd_rate:9.1f} events/s",
        f"   rows committed to domain_events (the producer)  : {flow.insert_rate:9.1f} events/s",
        f"   commit → events:all (relay)                     : {flow.stream_rate:9.1f} events/s"
        f"   ratio {flow.stream_rate / xadd_rate:.3f} of bare XADD",
        f"   commit → read model (relay + projector)         : {flow.model_rate:9.1f} events/s"
        f"   ratio {flow.model_rate / xadd_rate:.3f} of bare XADD",
        f"   lag commit → events:all     {ms(flow.to_stream)}",
        f"   lag commit → read model     {ms(flow.to_model)}   (behind the backlog of a burst)",
        f"   paced, {PACED_EVENTS} events one per transaction every {PACED_PAUSE * 1000:.0f} ms (no backlog):",
        f"   lag commit → events:all     {ms(paced.to_stream)}",
        f"   lag commit → read model     {ms(paced.to_model)}",
        f"   GET /v1/tenants/{{id}} ({args.reads} sequential each)",
        f"     Read-Source: cache        {ms(cached)}",
        f"     Read-Source: read-model   {ms(model)}   (cache key deleted before each)",
        f"     Read-Source: primary      {ms(primary)}   (a tenant with no read-model row)",
        f"     uncached/cached           p50 {pct(model, 0.5) / pct(cached, 0.5):.2f}x   "
        f"p99 {pct(model, 0.99) / pct(cached, 0.99):.2f}x",
    ]

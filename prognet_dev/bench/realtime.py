"""Sections 6 and 7 of `prognet bench`: SSE fan-out and webhook deliveries (tenants from `bench.events`).

6. sse: N streams `GET /v1/events/stream?tenant_id=…` of one user (SSE_MAX_STREAMS_PER_USER is raised for the
   bench's stack), raw httpx streaming clients in the bench process. Once every stream has answered 200, M events
   are committed one per transaction, `--sse-interval` apart; each client notes when each event's `data:` line
   arrives. Latency: that arrival minus the event's commit (time.time() once COMMIT returned). The clients share
   the bench's one event loop, so their own parsing is part of the figure. Baselines in the same run, reported as
   ratios: one stream alone (same events), and the bench's own XREAD BLOCK of the tenant's Redis stream during each
   round (commit → relay → Redis, which every SSE delivery includes).

7. webhooks: `prognet webhook-receiver` in its own process, with an endpoint of a tenant of its own pointing at it.
   Pipeline: W events committed (`--event-batch` per transaction), timed until the receiver printed W verified
   deliveries (relay → dispatcher → one `webhook-{id}` workflow each → signed POST), then checked: W delivery rows
   `delivered`, each in one attempt. Baseline, same run, same receiver: W signed httpx POSTs of a body of the same
   size, `--webhook-concurrency` at a time, over pooled keep-alive connections and again with a new connection per
   POST (what a delivery attempt does).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from models.event_stream import StreamEvent, tenant_stream
from prognet_dev.bench.events import BENCH_EVENT, BenchTenants, insert_events, ms, pct, wait_until

# --- 6. sse --------------------------------------------------------------------------------------------------------


class SseClient:
    def __init__(self, index: int) -> None:
        self.index = index
        self.arrivals: dict[uuid.UUID, float] = {}
        self.connected = asyncio.Event()

    async def follow(
        self, http: httpx.AsyncClient, tenants: BenchTenants, tenant_id: uuid.UUID, m: int, opening: asyncio.Semaphore
    ) -> None:
        headers = {"Authorization": f"Bearer {tenants.token}", "Accept": "text/event-stream"}
        params = {"tenant_id": str(tenant_id), "types": BENCH_EVENT}
        async with opening:  # released once the stream has answered (or failed)
            response = await http.send(
                http.build_request("GET", "/v1/events/stream", params=params, headers=headers), stream=True
            )
        try:
            response.raise_for_status()
            self.connected.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if "event_id" not in data:  # `event: error`: the server ended the stream
                        raise RuntimeError(f"SSE stream {self.index} ended by the server: {data}")
                    self.arrivals[uuid.UUID(data["event_id"])] = time.time()
                    if len(self.arrivals) >= m:
                        return
        finally:
            await response.aclose()


@dataclass
class SseRound:
    streams: int
    connect_seconds: float
    to_clients: list[float]  # commit → each stream's client, every event
    to_redis: list[float]  # commit → the bench's own XREAD of the tenant's Redis stream (the relay's share)


async def redis_reader(redis: Redis, stream: str, arrivals: dict[uuid.UUID, float], ready: asyncio.Event) -> None:
    """Notes when each entry of `stream` can be read from Redis (XREAD BLOCK, as an API process does)."""
    try:
        position = str((await redis.xinfo_stream(stream))["last-generated-id"])
    except ResponseError:  # no such stream yet
        position = "0-0"
    ready.set()
    while True:
        reply: Any = await redis.xread({stream: position}, count=500, block=1000)
        now = time.time()
        for _name, entries in reply or []:
            for entry_id, fields in entries:
                position = entry_id
                arrivals[StreamEvent.from_fields(fields).event_id] = now


async def sse_round(api_url: str, redis_url: str, tenants: BenchTenants, n: int, args) -> SseRound:
    """n streams of one tenant; m events committed one per transaction; every stream must get every event."""
    m = args.sse_events
    tenant_id = tenants.tenant_ids[0]
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    timeout = httpx.Timeout(60, connect=30)
    redis = Redis.from_url(redis_url, decode_responses=True)
    in_redis: dict[uuid.UUID, float] = {}
    reader_ready = asyncio.Event()
    reader = asyncio.create_task(redis_reader(redis, tenant_stream(tenant_id), in_redis, reader_ready))
    async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=timeout) as http:
        clients = [SseClient(i) for i in range(n)]
        # opened args.sse_connect_concurrency at a time: each open is a session check and a membership
        # transaction, and 200 at once queue past the database pool's timeout on a loaded 2-core machine
        opening = asyncio.Semaphore(args.sse_connect_concurrency)
        tasks = [asyncio.create_task(c.follow(http, tenants, tenant_id, m, opening)) for c in clients]
        conn = await asyncpg.connect(tenants.owner_dsn)
        try:
            connect_start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(reader_ready.wait(), *(c.connected.wait() for c in clients)), 120)
            connect_seconds = time.perf_counter() - connect_start
            committed = await insert_events(conn, [tenant_id], m, 1, pause=args.sse_interval)
            done, pending = await asyncio.wait(tasks, timeout=max(60.0, m * args.sse_interval * 2))
        finally:
            await conn.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await redis.aclose()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a stream that failed fails the run
    received = sum(len(c.arrivals) for c in clients)
    if received != n * m:
        raise RuntimeError(f"SSE: {received} of {n * m} events arrived ({len(pending)} streams incomplete)")
    if set(committed.at) - set(in_redis):
        raise RuntimeError("SSE: the bench's own Redis reader missed events")
    return SseRound(
        streams=n,
        connect_seconds=connect_seconds,
        to_clients=[t - committed.at[e] for c in clients for e, t in c.arrivals.items() if e in committed.at],
        to_redis=[in_redis[e] - at for e, at in committed.at.items()],
    )


def _ratio(values: list[float], base: list[float]) -> str:
    return f"p50 x{pct(values, 0.5) / pct(base, 0.5):5.2f}   p99 x{pct(values, 0.99) / pct(base, 0.99):5.2f}"


async def bench_sse(api_url: str, redis_url: str, tenants: BenchTenants, args) -> list[str]:
    """Baselines in the same run: one stream alone, and (in each round) the bench's own XREAD of the same Redis
    stream, which every SSE delivery waits for (commit → relay → Redis); then n streams at once."""
    n, m = args.sse_streams, args.sse_events
    one = await sse_round(api_url, redis_url, tenants, 1, args)
    many = await sse_round(api_url, redis_url, tenants, n, args)
    return [
        f"6. sse ({n} concurrent streams of one tenant, one user, one API process; {m} events committed "
        f"{args.sse_interval * 1000:.0f} ms apart; {n * m} deliveries, all received)",
        f"   {n} streams answered 200 in {many.connect_seconds:.1f} s",
        f"   commit → Redis (bench XREAD)   {ms(many.to_redis)}   (baseline: the relay's share)",
        f"   commit → 1 stream alone       {ms(one.to_clients)}",
        f"   1 stream vs its Redis read    {_ratio(one.to_clients, one.to_redis)}",
        f"   commit → each of {n:<4} streams {ms(many.to_clients)}   max {max(many.to_clients) * 1000:7.1f} ms",
        f"   {n} streams vs 1 stream       {_ratio(many.to_clients, one.to_clients)}",
        f"   {n} streams vs Redis read     {_ratio(many.to_clients, many.to_redis)}",
    ]


# --- 7. webhooks -----------------------------------------------------------------------------------------------------


class Receiver:
    """`prognet webhook-receiver` as a child process; its `delivered:` lines, timed as they are read."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.delivered: dict[str, float] = {}  # event id (pipeline) or webhook-id (raw) → when its line arrived
        self._reader: asyncio.Task | None = None

    async def start(self, port: int, secret: str) -> str:
        argv = [sys.executable, "-c", "import sys; from prognet.cli import main; sys.exit(main())"]
        self.process = await asyncio.create_subprocess_exec(
            *argv, "webhook-receiver", "--port", str(port), "--secret", secret, stdout=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None
        first = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        if not first.startswith("webhook receiver on"):
            raise RuntimeError(f"the webhook receiver did not start: {first!r}")
        self._reader = asyncio.create_task(self._read())
        return f"http://127.0.0.1:{port}/hooks"

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode()
            if line.startswith("delivered: "):
                words = dict(w.split("=", 1) for w in line.split() if "=" in w)
                self.delivered[words.get("event", line.split()[1])] = time.time()

    async def wait_for(self, count: int, timeout: float) -> None:
        await wait_until(lambda: _true(len(self.delivered) >= count), timeout, f"{count} webhook deliveries", 0.02)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def create_endpoint(stack, tenant_id: uuid.UUID, url: str) -> tuple[uuid.UUID, str]:
    """An endpoint for every event type of the tenant, as the API would store it; its id and signing secret."""
    from models.db import make_engine, transaction
    from models.tables import WebhookEndpoint
    from webhooks import secret_box
    from webhooks.signing import new_secret

    endpoint_id, secret = uuid.uuid4(), new_secret()
    sealed = secret_box.seal(stack.settings().derived_key(secret_box.KEY_PURPOSE), endpoint_id, secret)
    engine = make_engine(stack.migration_database_url)
    try:
        async with transaction(engine) as db:
            db.add(
                WebhookEndpoint(
                    id=endpoint_id,
                    tenant_id=tenant_id,
                    url=url,
                    description="bench",
                    secret_sealed=sealed,
                    created_at=datetime.now(UTC) - timedelta(seconds=5),
                )
            )
    finally:
        await engine.dispose()
    return endpoint_id, secret


def sample_body(tenant_id: uuid.UUID) -> bytes:
    """A delivery's body for a bench event, encoded as the delivery activity encodes it."""
    from models.contracts import WebhookEvent
    from prognet_dev.bench.events import payload

    event = WebhookEvent(
        id=uuid.uuid4(),
        type=BENCH_EVENT,
        version=1,
        occurred_at=datetime.now(UTC),
        tenant_id=tenant_id,
        aggregate_type="invoice",
        aggregate_id=str(uuid.uuid4()),
        payload=json.loads(payload(1)),
    )
    return json.dumps(event.body(), separators=(",", ":"), sort_keys=True).encode()


async def raw_posts(url: str, secret: str, body: bytes, n: int, concurrency: int, keepalive: bool) -> float:
    from prognet_dev.bench import _gather_limited
    from webhooks import signing

    async def post(client: httpx.AsyncClient) -> None:
        msg_id = str(uuid.uuid4())
        headers = {**signing.headers([secret], msg_id, int(time.time()), body), "content-type": "application/json"}
        (await client.post(url, content=body, headers=headers)).raise_for_status()

    start = time.perf_counter()
    if keepalive:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await _gather_limited(n, concurrency, lambda _: post(client))
    else:

        async def fresh(_: int) -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await post(client)

        await _gather_limited(n, concurrency, fresh)
    return time.perf_counter() - start


async def pipeline(receiver: Receiver, tenants: BenchTenants, n: int, batch: int) -> tuple[float, list[float]]:
    """Seconds from the first event's transaction until the receiver printed all n; commit → receiver latencies."""
    conn = await asyncpg.connect(tenants.owner_dsn)
    try:
        before = len(receiver.delivered)
        committed = await insert_events(conn, [tenants.hooks_tenant], n, batch)
        await receiver.wait_for(before + n, max(120.0, n / 2))
    finally:
        await conn.close()
    arrivals = {uuid.UUID(k): v for k, v in receiver.delivered.items() if _is_uuid(k)}
    latencies = [arrivals[e] - at for e, at in committed.at.items()]
    return max(arrivals[e] for e in committed.at) - committed.started, latencies


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def check_deliveries(tenants: BenchTenants, endpoint_id: uuid.UUID, n: int) -> str:
    conn = await asyncpg.connect(tenants.owner_dsn)
    try:
        sql = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'delivered' AND attempts = 1"
        await wait_until(lambda: _ge(conn.fetchval(sql, endpoint_id), n), 60, f"{n} delivery rows marked delivered")
        total = await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id)
    finally:
        await conn.close()
    if total != n:
        raise RuntimeError(f"{total} delivery rows for {n} events")
    return f"{n} delivery rows `delivered` in 1 attempt, no others"


async def _ge(value: Any, n: int) -> bool:
    return int(await value) >= n


async def bench_webhooks(tenants: BenchTenants, stack, args) -> list[str]:
    from prognet_dev import free_port

    n, conc = args.webhooks, args.webhook_concurrency
    # the receiver needs the secret and the endpoint the URL: the port first, then the endpoint, then the receiver
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    endpoint_id, secret = await create_endpoint(stack, tenants.hooks_tenant, url)
    receiver = Receiver()
    try:
        await receiver.start(port, secret)
        body = sample_body(tenants.hooks_tenant)
        warm = 5
        await raw_posts(url, secret, body, warm, warm, keepalive=True)
        await pipeline(receiver, tenants, warm, warm)
        t_pool = await raw_posts(url, secret, body, n, conc, keepalive=True)
        t_fresh = await raw_posts(url, secret, body, n, conc, keepalive=False)
        t_pipe, latencies = await pipeline(receiver, tenants, n, args.event_batch)
        checked = await check_deliveries(tenants, endpoint_id, warm + n)
    finally:
        await receiver.stop()
    pool_rate, fresh_rate, pipe_rate = n / t_pool, n / t_fresh, n / t_pipe
    return [
        f"7. webhooks ({n} each to one `prognet webhook-receiver` process; body {len(body)} bytes, signed)",
        f"   raw httpx POSTs, keep-alive pool, concurrency {conc:<3}   : {pool_rate:8.1f} /s",
        f"   raw httpx POSTs, new connection each, concurrency {conc:<3}: {fresh_rate:8.1f} /s",
        f"   deliveries, commit → receiver ({args.event_batch} events/transaction): {pipe_rate:8.1f} /s"
        f"   ratio {pipe_rate / pool_rate:.3f} of keep-alive, {pipe_rate / fresh_rate:.3f} of new-connection POSTs",
        f"   delivery latency commit → receiver  {ms(latencies)}",
        f"   checked: {checked}",
    ]

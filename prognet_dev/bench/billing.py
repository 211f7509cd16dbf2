"""Section 4 of `prognet bench`: billing cycles for N subscriptions falling due at once.

Setup (not timed): N tenants as the database owner (a user, the tenant row, an owner membership and
`tenant_billing`), each with a Stripe customer created in the stack's Stripe sandbox through the `stripe` SDK.
No `subscriptions` rows and no `subscription-*` workflows: the cycles are started alone, as a Schedule-driven
subscription's child would be, with the same id (`billing-{subscription_id}-0`), search attributes and input
(`pm_card_visa`, no dunning).

Timed: from the first `BillingCycle` start until all N results are in. The real worker runs them with the real
activities (invoice in PostgreSQL, PaymentIntent in the sandbox, invoice paid, `invoice.paid` event) and starts the
receipt email as an abandoned `EmailDelivery` child. A cycle's result does not wait for its email, so the
headline figure does not count the email's delivery (section 3 measures the pipeline); the receipts are then
awaited in the Maildir and reported as a second, explicit figure ("incl. receipts").

Baseline, same run: N bare workflows with as many no-op activities as one paid cycle scheduled (counted from
the history of a warm-up cycle, not assumed), started all at once on the same server, on the bench's own
worker process.

The run is checked before any figure is printed: N results `paid` in one attempt, exactly N succeeded
PaymentIntents for these subscriptions in the sandbox (and no other PaymentIntent for them), N invoices `paid`
with those intents, N `invoice.paid` events, N receipts in the Maildir.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BILLING_PLAN_ID = "team-monthly"
PAYMENT_METHOD = "pm_card_visa"


@dataclass
class BenchSubscription:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    subscription_id: uuid.UUID
    stripe_customer_id: str


@dataclass
class BillingRun:
    n: int
    seconds: float  # first start → all results
    seconds_with_receipts: float  # first start → all receipts in the Maildir
    subscriptions: list[BenchSubscription]
    results: list[Any]
    checks: list[str] = field(default_factory=list)


@dataclass
class CycleShape:
    """What one paid cycle does, read from its history."""

    activities: int
    local_activities: int
    child_workflows: int
    activity_types: list[str]


async def create_billing_tenants(stack, count: int, concurrency: int = 10) -> list[BenchSubscription]:
    """`count` active tenants with their billing configuration and a Stripe customer in the sandbox."""
    from activities.billing import stripe_client
    from models.db import make_engine, transaction
    from models.tables import Membership, Tenant, TenantBilling, User
    from prognet.passwords import hasher
    from prognet.settings import Settings

    plan = billing_plan()
    client = stripe_client(stack.settings())
    run = uuid.uuid4().hex[:8]
    subs = [
        BenchSubscription(
            tenant_id=uuid.uuid4(), user_id=uuid.uuid4(), subscription_id=uuid.uuid4(), stripe_customer_id=""
        )
        for _ in range(count)
    ]

    async def customer(i: int) -> None:
        sub = subs[i]
        created = await client.v1.customers.create_async(
            params={"name": f"Bench billing {run}-{i}", "metadata": {"tenant_id": str(sub.tenant_id)}},
            options={"idempotency_key": f"bench-{run}-customer-{i}"},
        )
        sub.stripe_customer_id = created.id

    sem = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> None:
        async with sem:
            await customer(i)

    await asyncio.gather(*(limited(i) for i in range(count)))

    digest = hasher(Settings()).hash("benchmark password 123")
    engine = make_engine(stack.migration_database_url)  # the owner: a superuser, so no tenant context is needed
    try:
        async with transaction(engine) as db:
            for i, sub in enumerate(subs):
                db.add(
                    User(id=sub.user_id, email=f"billing-{run}-{i}@example.com", password_hash=digest, status="active")
                )
            await db.flush()
            for i, sub in enumerate(subs):
                db.add(
                    Tenant(
                        id=sub.tenant_id,
                        name=f"Bench billing {i}",
                        slug=f"bench-{run}-{i}",
                        status="active",
                        created_by=sub.user_id,
                        activated_at=datetime.now(UTC),
                    )
                )
            await db.flush()
            for i, sub in enumerate(subs):
                db.add(Membership(tenant_id=sub.tenant_id, user_id=sub.user_id, role="owner"))
                db.add(
                    TenantBilling(
                        tenant_id=sub.tenant_id,
                        stripe_customer_id=sub.stripe_customer_id,
                        currency=plan.currency,
                        billing_email=f"billing-{run}-{i}@example.com",
                        plan=plan.id,
                    )
                )
    finally:
        await engine.dispose()
    return subs


def billing_plan():
    from models.plans import load_plans

    return next(p for p in load_plans() if p.id == BILLING_PLAN_ID)


def cycle_input(sub: BenchSubscription, now: datetime):
    from models.billing_cycle_contracts import BillingCycleInput

    plan = billing_plan()
    return BillingCycleInput(
        subscription_id=sub.subscription_id,
        tenant_id=sub.tenant_id,
        plan_id=plan.id,
        amount=plan.amount,
        currency=plan.currency,
        period_index=0,
        period_start=now,
        period_end=now.replace(year=now.year + 1) if plan.interval == "year" else _next_month(now),
        payment_method=PAYMENT_METHOD,
        stripe_customer_id=sub.stripe_customer_id,
        notify_user_id=sub.user_id,
        dunning_schedule_days=[],
    )


def _next_month(when: datetime) -> datetime:
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    return when.replace(year=year, month=month, day=min(when.day, 28))


# Starts in flight and results awaited at once: each result is a long poll on the server; 10,000 of them would
# hold as many gRPC streams (500 at once already timed out on the dev server).
RESULT_WAITERS = 100


async def start_cycles(client, subs: list[BenchSubscription]) -> list[Any]:
    """Start one BillingCycle per subscription, all at once, as a due Schedule's children would be started."""
    from temporalio.common import (
        SearchAttributePair,
        TypedSearchAttributes,
        WorkflowIDReusePolicy,
    )

    from models.billing_cycle_contracts import BillingCycleResult
    from models.names import (
        BILLING_CYCLE_WORKFLOW,
        SA_SUBSCRIPTION_ID,
        SA_TENANT_ID,
        TASK_QUEUE,
        billing_cycle_workflow_id,
    )

    now = datetime.now(UTC)

    async def start(sub: BenchSubscription):
        return await client.start_workflow(
            BILLING_CYCLE_WORKFLOW,
            cycle_input(sub, now),
            id=billing_cycle_workflow_id(sub.subscription_id, 0),
            task_queue=TASK_QUEUE,
            result_type=BillingCycleResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_TENANT_ID, str(sub.tenant_id)),
                    SearchAttributePair(SA_SUBSCRIPTION_ID, str(sub.subscription_id)),
                ]
            ),
            static_summary=f"Billing period 0 of subscription {sub.subscription_id} (bench)",
        )

    starting = asyncio.Semaphore(RESULT_WAITERS)

    async def limited(sub: BenchSubscription):
        async with starting:
            return await start(sub)

    return await asyncio.gather(*(limited(sub) for sub in subs))


async def run_cycles(client, subs: list[BenchSubscription], maildir: Path, receipt_timeout: float) -> BillingRun:
    from prognet_dev.bench import maildir_count, wait_for_maildir

    before = maildir_count(maildir)
    start = time.perf_counter()
    handles = await start_cycles(client, subs)
    waiting = asyncio.Semaphore(RESULT_WAITERS)

    async def result(handle):
        async with waiting:
            return await handle.result()

    results = await asyncio.gather(*(result(h) for h in handles))
    seconds = time.perf_counter() - start
    await wait_for_maildir(maildir, before + len(subs), receipt_timeout)
    return BillingRun(
        n=len(subs),
        seconds=seconds,
        seconds_with_receipts=time.perf_counter() - start,
        subscriptions=subs,
        results=list(results),
    )


async def cycle_shape(client, workflow_id: str) -> CycleShape:
    """Count what a finished cycle scheduled: activities, local activities (markers), child workflows."""
    from temporalio.api.enums.v1 import EventType

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    types = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED)
    children = sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    )
    return CycleShape(activities=len(types), local_activities=markers, child_workflows=children, activity_types=types)


def webhook_timeout(count: int) -> float:
    """How long the sandbox may take to deliver the webhooks of `count` customers or payments (about 50/s here)."""
    return max(60.0, count / 10)


class BillingCheckFailed(AssertionError):
    pass


async def verify_run(stack, admin, run: BillingRun) -> list[str]:
    """The run counts only if every cycle really paid once; returns what was checked (raises otherwise)."""
    from sqlalchemy import text

    from models.db import make_engine

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise BillingCheckFailed(f"billing bench run is broken: {what}")

    n = run.n
    sub_ids = {str(s.subscription_id) for s in run.subscriptions}
    statuses = [r.status for r in run.results]
    check(statuses.count("paid") == n, f"{statuses.count('paid')} of {n} cycles paid ({set(statuses)})")
    check(all(r.attempts == 1 for r in run.results), "a cycle needed more than one charge attempt")
    paid_pis = {r.payment_intent_id for r in run.results}
    check(len(paid_pis) == n and None not in paid_pis, "results do not name n distinct PaymentIntents")

    await admin.wait_for_webhooks(timeout=webhook_timeout(n))
    mine = [pi for pi in await admin.payment_intents() if pi["metadata"].get("subscription_id") in sub_ids]
    succeeded = [pi for pi in mine if pi["status"] == "succeeded"]
    check(len(succeeded) == n, f"{len(succeeded)} succeeded PaymentIntents in the sandbox for {n} subscriptions")
    check(len(mine) == n, f"{len(mine)} PaymentIntents in all for {n} subscriptions (a double charge?)")
    check({pi["id"] for pi in succeeded} == paid_pis, "the sandbox's succeeded intents are not the cycles' ones")

    engine = make_engine(stack.migration_database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT status, payment_intent_id, workflow_id FROM invoices "
                        "WHERE subscription_id::text = ANY(:ids)"
                    ),
                    {"ids": list(sub_ids)},
                )
            ).all()
            events = (
                await conn.execute(
                    text("SELECT count(*) FROM domain_events WHERE type = 'invoice.paid' AND workflow_id = ANY(:wids)"),
                    {"wids": [r.workflow_id for r in rows]},
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    check(len(rows) == n and all(r.status == "paid" for r in rows), f"{len(rows)} invoices, not n paid ones")
    check({r.payment_intent_id for r in rows} == paid_pis, "invoices are not paid by the cycles' PaymentIntents")
    check(events == n, f"{events} invoice.paid events for {n} cycles")
    return [
        f"{n} cycles paid in 1 attempt",
        f"{len(succeeded)} succeeded PaymentIntents (of {len(mine)}) in the sandbox",
        f"{len(rows)} invoices paid",
        f"{events} invoice.paid events",
        f"{n} receipts in the Maildir",
    ]


# --- scale figures (`prognet bench --sections billing --billing 10000`) ------------------------------------------


def peak_rss_mb(pid: int | None) -> float | None:
    """The process's peak resident set since it started (the kernel's VmHWM), in MiB; None if unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ConnectionPeak:
    """Samples the client connections open on our PostgreSQL (pg_stat_activity) while a run goes on; `peak`
    is the most seen at once. One extra connection of its own, not counted."""

    def __init__(self, database_url: str, interval: float = 0.25) -> None:
        self.database_url = database_url
        self.interval = interval
        self.peak = 0
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        from sqlalchemy import text

        from models.db import make_engine

        engine = make_engine(self.database_url)
        query = text(
            "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND datname = current_database()"
        )
        try:
            async with engine.connect() as conn:
                while True:
                    self.peak = max(self.peak, (await conn.execute(query)).scalar_one())
                    await conn.commit()  # a fresh snapshot of pg_stat_activity each time
                    await asyncio.sleep(self.interval)
        finally:
            await engine.dispose()

    def __enter__(self) -> ConnectionPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


def scale_lines(stack, run: BillingRun, connections: ConnectionPeak) -> list[str]:
    def mb(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.0f} MiB"

    worker_pid = stack.worker.process.pid if getattr(stack, "worker", None) and stack.worker.process else None
    temporal = getattr(stack, "temporal", None)
    server_pid = temporal.process.pid if temporal is not None and temporal.process is not None else None
    worker_rss, server_rss = mb(peak_rss_mb(worker_pid)), mb(peak_rss_mb(server_pid))
    return [
        f"   {run.n} cycles: {run.n / run.seconds:.1f} cycles/s to the last result ({run.seconds:.1f} s); "
        f"last receipt in the Maildir after {run.seconds_with_receipts:.1f} s",
        f"   peak RSS since start: worker {worker_rss}, Temporal server {server_rss}; "
        f"PostgreSQL client connections at most {connections.peak} at once during the run",
    ]

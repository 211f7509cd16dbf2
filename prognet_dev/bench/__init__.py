"""`prognet bench` (`make bench`): figures measured side by side in one run on the embedded stack.

Every figure is reported next to a baseline measured in the same run, because these machines are shared
and noisy: only the ratios carry over between runs.

1. Registration sagas/s through HTTP vs bare Temporal workflows with the same number of no-op activities.
2. Logins/s over HTTP vs raw argon2 verifications/s on the same cores, and `GET /healthz` latency during
   that login storm vs idle (argon2 must never block the API's event loop), and the CPU per login of each process
   of the stack and of this one (prognet_dev/bench/cpu.py) beside the CPU of one raw verification.
3. Emails delivered/s to the local SMTP sink through the pipeline (one EmailDelivery workflow per message,
   started directly with a Temporal client, timed until every message is in the Maildir) vs raw aiosmtplib
   sends/s to the same sink. The pipeline's send-rate limit (EMAIL_MAX_PER_SECOND) is raised for the run, so
   the figure is the pipeline's own cost, not the limit.
4. Billing cycles/s for N subscriptions falling due at once (N `BillingCycle` workflows started together, run by
   the real worker with the real activities against PostgreSQL and the Stripe sandbox, timed until all N
   results) vs N bare workflows with as many no-op activities as one paid cycle scheduled. The run is checked
   (N paid, exactly N succeeded PaymentIntents, …) before the figures are printed. See prognet_dev/bench/billing.py.
5. Events/s through outbox → relay → `events:all` → projector vs a bare pipelined XADD loop on the same Redis;
   commit-to-stream and commit-to-read-model lag p50/p99; `GET /v1/tenants/{id}` latency from the cache, the read
   model and the primary. See prognet_dev/bench/events.py.
6. SSE fan-out: N concurrent streams of one tenant receiving each of M events, commit-to-client p50/p99, as ratios
   to one stream alone and to the bench's own Redis read of the same events.
7. Webhook deliveries/s to a local `prognet webhook-receiver` vs raw signed POSTs/s to the same receiver.
   Sections 6 and 7: prognet_dev/bench/realtime.py.
8. What tracing + metrics + the payload codec cost: registration and billing sagas/s with telemetry on vs off
   (BENCH_TELEMETRY_OFF) on the same stack, phases on, off, off, on. See prognet_dev/bench/telemetry.py.

Sections are chosen with `--sections` (alias `--only`), by number or name: `prognet bench --only billing`.

Sections 1-4 also print, for the journeys and for each baseline, the CPU per journey of every process (read from
/proc; the SMTP sink and the Stripe sandbox run as processes of their own for that), the wall time x cores, and
each saga's CPU-bound ceiling and the CPU per journey its target ratio would need (prognet_dev/bench/cpu.py).
`--profile DIR` records the worker, the API and the event consumers with py-spy while each section's journeys run
(prognet_dev/bench/profile.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from prognet_dev.bench.http1 import ConnectionPool, HealthzProbe
from prognet_dev.bench.roundtrip import RoundTrips

if TYPE_CHECKING:
    from prognet_dev.stack import EmbeddedStack

BENCH_PASSWORD = "benchmark password 123"
SECTION_NAMES = {
    "sagas": 1,
    "registration": 1,
    "logins": 2,
    "login": 2,
    "emails": 3,
    "email": 3,
    "billing": 4,
    "events": 5,
    "sse": 6,
    "webhooks": 7,
    "telemetry": 8,
}


def parse_sections(text: str) -> set[int]:
    """`1,3`, `billing` or `sagas,billing` → section numbers; an unknown one is an error, not silently skipped."""
    sections: set[int] = set()
    for part in (x.strip().lower() for x in text.split(",")):
        if not part:
            continue
        number = SECTION_NAMES.get(part) or (int(part) if part.isdigit() else None)
        if number is None or number not in SECTION_NAMES.values():
            raise argparse.ArgumentTypeError(
                f"unknown section {part!r} (1-{max(SECTION_NAMES.values())} or {', '.join(sorted(set(SECTION_NAMES)))})"
            )
        sections.add(number)
    if not sections:
        raise argparse.ArgumentTypeError("no section chosen")
    return sections


BILLING_WARMUP = 3  # cycles run (and checked) before the timed ones; one of them gives the activity count
# Bare-workflow baselines of the billing section run at most this many workflows (all at once: 500 at once timed
# out their result long polls on the dev server), and 10,000 of each would triple a `--billing 10000` run.
BILLING_BASELINE_MAX = 100
EMAIL_BENCH_MAX_PER_SECOND = 100_000  # EMAIL_MAX_PER_SECOND for the bench's worker: effectively no limit


def _quiet(name: str, line: str) -> None:
    pass


def _api_pid(stack: EmbeddedStack) -> int | None:
    api = stack.api
    return api.process.pid if api is not None and api.process is not None else None


def _pct(values: list[float], q: float) -> float:
    from prognet_dev.bench.events import pct

    return pct(values, q)


async def _gather_limited(n: int, limit: int, make) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(i: int):
        async with sem:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


# --- 1. sagas ------------------------------------------------------------------------------------------------


async def bench_registrations(
    api_url: str, maildir: Path, n: int, concurrency: int, workflow_ids: list[str] | None = None
) -> float:
    """Seconds for n registrations, from the first POST until every verification email is in the Maildir.
    The registrations' workflow ids are appended to `workflow_ids` (to read a real history's shape)."""
    before = maildir_count(maildir)
    run = uuid.uuid4().hex[:8]
    start = time.perf_counter()

    async def register(i: int) -> None:
        # As a client should: a 503 (the saga not confirmed within 15 s on a saturated machine) or no answer in
        # time is retried (after Retry-After) with the same Idempotency-Key, which finds the same registration.
        key = f"bench-{run}-{i}"
        async with pool.connection() as api:
            while True:
                try:
                    r = await api.request(
                        "POST",
                        "/v1/auth/register",
                        {"email": f"bench-{run}-{i}@example.com", "password": BENCH_PASSWORD},
                        headers={"Idempotency-Key": key},
                    )
                except TimeoutError:
                    continue
                if r.status != 503:
                    break
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        r.raise_for_status("POST /v1/auth/register")
        if workflow_ids is not None:
            workflow_ids.append(r.json()["workflow_id"])

    async with ConnectionPool(api_url, concurrency) as pool:
        await _gather_limited(n, concurrency, register)
    # the sink writes the Maildir from another task; counting its files is cheap (parsing them is not)
    await wait_for_maildir(maildir, before + n, max(120.0, n))
    return time.perf_counter() - start


async def bench_noop_workflows(address: str, n: int, concurrency: int, steps: int | None = None) -> float:
    from temporalio.client import Client

    from prognet_dev.bench.noop_workflow import NOOP_ACTIVITIES, NOOP_TASK_QUEUE, NoopWorkflow

    client = await Client.connect(address)
    run = uuid.uuid4().hex[:8]
    start = time.perf_counter()

    async def one(i: int) -> None:
        await client.execute_workflow(
            NoopWorkflow.run,
            NOOP_ACTIVITIES if steps is None else steps,
            id=f"bench-noop-{run}-{i}",
            task_queue=NOOP_TASK_QUEUE,
        )

    await _gather_limited(n, concurrency, one)
    return time.perf_counter() - start


async def bench_shaped_workflows(
    address: str, plan: dict, n: int, concurrency: int, *, time_children: bool = True
) -> float:
    """Seconds for n bare `ShapedWorkflow`s of `plan` (a real journey's shape), children included in the time
    unless the journey's own figure leaves them out (billing: results, not receipts). The children are awaited
    either way before this returns: left running, they would do their work in the next phase (the real
    journeys' time and CPU) and drop out of this one's CPU, which is measured, as the journey's is, until
    everything the phase started has finished."""
    from temporalio.client import Client

    from prognet_dev.bench.noop_workflow import NOOP_TASK_QUEUE, ShapedWorkflow

    client = await Client.connect(address)
    run = uuid.uuid4().hex[:8]
    start = time.perf_counter()
    untimed: list[str] = []

    async def finish(workflow_id: str, timed: bool) -> None:
        children = await client.get_workflow_handle(workflow_id, result_type=list[str]).result()
        if timed:
            await asyncio.gather(*(finish(c, True) for c in children))
        else:
            untimed.extend(children)

    async def one(i: int) -> None:
        workflow_id = f"bench-shaped-{run}-{i}"
        await client.start_workflow(ShapedWorkflow.run, plan, id=workflow_id, task_queue=NOOP_TASK_QUEUE)
        await finish(workflow_id, time_children)

    await _gather_limited(n, concurrency, one)
    seconds = time.perf_counter() - start
    await _gather_limited(len(untimed), concurrency, lambda i: finish(untimed[i], True))
    return seconds


# --- 2. logins ---------------------------------------------------------------------------------------------------


def bench_raw_argon2(n: int) -> float:
    """Seconds for n argon2 verifications the way argon2-cffi makes them (a fresh `memory_cost` mapping each),
    spread over one thread per core at the API's lowered priority."""
    from prognet.passwords import CORES, hasher, lower_thread_priority
    from prognet.settings import Settings

    ph = hasher(Settings())
    digest = ph.hash(BENCH_PASSWORD)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CORES, initializer=lower_thread_priority) as pool:
        list(pool.map(lambda _: ph.verify(digest, BENCH_PASSWORD), range(n)))
    return time.perf_counter() - start


async def hash_as_the_api_does(n: int) -> None:
    """n verifications through the API's own hashing (prognet/passwords.py: its pool of one thread per core at
    the lowered priority, one thread per hash while others run, each thread's memory block kept), all submitted
    at once as a login storm's would be."""
    from prognet import passwords
    from prognet.settings import Settings

    settings = Settings()
    digest = await passwords.hash_password(settings, BENCH_PASSWORD)
    await asyncio.gather(*(passwords.verify_password(settings, digest, BENCH_PASSWORD) for _ in range(n)))


def argon2_hash_cpu_ms(n: int = 4) -> float:
    """CPU ms of one argon2 hash as the API makes it while other hashes run (one thread, its memory block kept):
    work a registration cannot skip, measured here as the bench's process CPU across n hashes in a row."""
    from prognet import argon2id
    from prognet.passwords import parameters
    from prognet.settings import Settings

    params = parameters(Settings())
    argon2id.hash_password(BENCH_PASSWORD, *params)  # this thread's memory block, as a hashing thread keeps one
    start = time.process_time()
    for _ in range(n):
        argon2id.hash_password(BENCH_PASSWORD, *params)
    return (time.process_time() - start) * 1000 / n


async def create_active_users(database_url: str, count: int) -> list[str]:
    from models.db import make_engine, transaction
    from models.tables import User
    from prognet.passwords import hasher
    from prognet.settings import Settings

    digest = hasher(Settings()).hash(BENCH_PASSWORD)
    emails = [f"login-{uuid.uuid4().hex[:10]}@example.com" for _ in range(count)]
    engine = make_engine(database_url)
    async with transaction(engine) as session:
        for email in emails:
            session.add(User(id=uuid.uuid4(), email=email, password_hash=digest, status="active"))
    await engine.dispose()
    return emails


# One probe per 50 ms: a probe costs the API some CPU, so a tighter loop (10 ms) took a good part of a core from the
# logins it measures; a 60-login storm still gives well over a hundred probes. The idle phase (IDLE_PROBE_SECONDS)
# gives about four hundred, so its p99 is the fourth-worst probe: with two hundred it was the second-worst, and one
# stray pair of slow probes moved the idle p99 between 1.2 and 4.9 ms from run to run, and the ratio with it.
HEALTHZ_PROBE_INTERVAL = 0.05
IDLE_PROBE_SECONDS = 20.0
HEALTHZ_P99_TARGET = 2.0  # /healthz p99 during the storm at most this many times its idle p99
ROUND_TRIPS_IDLE_SECONDS = 6.0  # ~300 round trips at rest
ROUND_TRIPS_HASHES = 120  # hashed as the API does, ~7 s on two cores: ~300 round trips


async def probe_healthz(base_url: str, stop: asyncio.Event) -> list[float]:
    probe = HealthzProbe(base_url)
    latencies: list[float] = []
    try:
        while not stop.is_set():
            latencies.append(await probe.get())
            await asyncio.sleep(HEALTHZ_PROBE_INTERVAL)
    finally:
        await probe.close()
    return latencies


async def bench_logins(api_url: str, emails: list[str], n: int, concurrency: int) -> tuple[float, list[float]]:
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_healthz(api_url, stop))
    start = time.perf_counter()

    async def login(i: int) -> None:
        async with pool.connection() as api:
            r = await api.request(
                "POST", "/v1/auth/login", {"email": emails[i % len(emails)], "password": BENCH_PASSWORD}
            )
        r.raise_for_status("POST /v1/auth/login")

    async with ConnectionPool(api_url, concurrency) as pool:
        await _gather_limited(n, concurrency, login)
    elapsed = time.perf_counter() - start
    stop.set()
    return elapsed, await prober


async def idle_healthz(api_url: str, seconds: float) -> list[float]:
    stop = asyncio.Event()
    task = asyncio.create_task(probe_healthz(api_url, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return await task


# --- 3. emails ---------------------------------------------------------------------------------------------------


def maildir_count(maildir: Path) -> int:
    """Messages in the Maildir, by counting files (parsing them all while polling would steal the CPU measured)."""
    return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).is_dir())


async def wait_for_maildir(maildir: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while maildir_count(maildir) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {maildir_count(maildir)} of {count} messages reached {maildir} in {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def bench_raw_smtp(host: str, port: int, maildir: Path, n: int, concurrency: int) -> float:
    """Seconds for n aiosmtplib sends (one connection each, like a pipeline send) of a small message to the sink."""
    from email.message import EmailMessage

    import aiosmtplib

    before = maildir_count(maildir)
    run = uuid.uuid4().hex[:8]
    start = time.perf_counter()

    async def send(i: int) -> None:
        msg = EmailMessage()
        msg["From"] = "bench@prognet.test"
        msg["To"] = f"raw-{run}-{i}@example.com"
        msg["Subject"] = "Bench"
        msg.set_content("Hello")
        await aiosmtplib.send(msg, hostname=host, port=port, timeout=30)

    await _gather_limited(n, concurrency, send)
    await wait_for_maildir(maildir, before + n, 60)
    return time.perf_counter() - start


async def bench_email_pipeline(
    client, maildir: Path, n: int, concurrency: int, workflow_ids: list[str] | None = None
) -> float:
    """Seconds from the first EmailDelivery start until all n messages are in the Maildir."""
    from models.contracts import EmailRequest
    from models.names import EMAIL_DELIVERY_WORKFLOW, EMAIL_TASK_QUEUE, email_workflow_id

    before = maildir_count(maildir)
    run = uuid.uuid4().hex[:8]
    start = time.perf_counter()

    async def one(i: int) -> None:
        message_id = uuid.uuid4()
        req = EmailRequest(
            message_id=message_id,
            template="notice",
            to_address=f"bench-{run}-{i}@example.com",
            params={"subject": "Bench", "body": "Hello"},
        )
        await client.start_workflow(
            EMAIL_DELIVERY_WORKFLOW, req, id=email_workflow_id(message_id), task_queue=EMAIL_TASK_QUEUE
        )
        if workflow_ids is not None:
            workflow_ids.append(email_workflow_id(message_id))

    await _gather_limited(n, concurrency, one)
    await wait_for_maildir(maildir, before + n, max(120.0, n / 2))
    return time.perf_counter() - start


# --- driver ----------------------------------------------------------------------------------------------------


NAIVE_STEPS = {"registration": 3, "emails": 3, "billing": 5}  # one no-op activity per business step


def _targets() -> dict[str, list]:
    """Issue 16's ratio targets, each against the phase measured as its baseline (for the CPU budgets)."""
    from prognet_dev.bench.cpu import Target

    return {
        "registration": [Target("naive_ratio", "naive", 0.5)],
        "emails": [Target("naive_ratio", "naive", 1.5), Target("raw_smtp_ratio", "raw_smtp", 0.1)],
        "billing": [Target("naive_ratio", "naive", 1.0)],
        "logins": [Target("ratio", "argon2", 0.9)],
    }


def _cpu_lines(phases: dict, budgets: list, labels: dict[str, str], unit: str = "journey") -> list[str]:
    """One line per measured phase (CPU per journey by process, wall time x cores), then the CPU-bound ceiling."""
    from prognet_dev.bench.cpu import ceiling_lines

    lines = [phase.line(labels.get(name, name), unit) for name, phase in phases.items()]
    return lines + ceiling_lines(phases["journey"], budgets, unit)


def _print_saga(
    number: int, title: str, section: dict, shape, naive_steps: int, line: str, cpu_lines: list[str]
) -> None:
    from prognet_dev.bench.shape import bare_workflow_tasks

    plan = shape.plan()
    print(f"{number}. {title}")
    print(f"   real journey: {shape.journey_events} events, {shape.journey_workflow_tasks} workflow tasks")
    print(f"     ({shape.describe()})")
    print(f"   naive bare workflow, {naive_steps} no-op activities      : {section['naive_baseline_rate']:8.1f} /s")
    bare_tasks = bare_workflow_tasks(plan)
    print(f"   same-shape bare workflow ({bare_tasks} wf tasks) : {section['same_shape_baseline_rate']:8.1f} /s")
    print(
        f"   {line:<42}: {section['rate']:8.1f} /s   naive ratio {section['naive_ratio']:.2f}, "
        f"same-shape ratio {section['same_shape_ratio']:.2f}, {section['events_per_journey']} events/journey"
    )
    for cpu_line in cpu_lines:
        print(cpu_line)


async def run(args: argparse.Namespace) -> None:
    from prognet_dev import EmbeddedStack, stack_settings
    from prognet_dev.bench.cpu import NOT_COUNTED, CpuMeter, cores, main_thread_cpu, section_cpu, settle
    from prognet_dev.bench.profile import Profiles
    from prognet_dev.bench.services import ServiceProcesses
    from prognet_dev.bench.shape import journey_shape, saga_section
    from prognet_dev.ports import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="prognet-bench-"))
    data_dir.chmod(0o755)  # noqa: ASYNC240 - once, before the loop runs anything else
    api_port = free_port()
    # the SMTP sink and the Stripe sandbox in processes of their own, so that their CPU is theirs, not the client's
    services = ServiceProcesses(data_dir / "data", api_port)
    stack = EmbeddedStack(
        stack_settings(data_dir / "data", api_port=api_port, **services.settings()),
        app=True,
        log=_quiet,
        extra_env=services.env()
        | {
            "EMAIL_MAX_PER_SECOND": str(EMAIL_BENCH_MAX_PER_SECOND),
            # section 6 holds this many streams of one user at once
            "SSE_MAX_STREAMS_PER_USER": str(args.sse_streams + 10),
            "SSE_MAX_STREAMS_PER_PROCESS": str(max(500, args.sse_streams + 10)),
            "SSE_REDIS_MAX_CONNECTIONS": str(max(500, args.sse_streams + 10)),
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # section 7's receiver is on loopback
        },
    )
    sections = args.sections
    figures: dict[str, dict] = {}
    cpu_lines: dict[str, list[str]] = {}
    targets = _targets()
    stripe_admin = None
    print(f"starting the embedded stack in {data_dir} ...", flush=True)
    await services.start()
    try:
        await stack.start()
    except BaseException:
        services.stop()
        raise
    # stack_settings embeds every service and app=True starts the API, so start() has resolved every address
    assert stack.temporal_address and stack.api_url and stack.database_url, "the bench's stack is fully embedded"
    assert stack.smtp_host and stack.smtp_port and stack.stripe_api_base, "the bench's stack is fully embedded"
    assert stack.migration_database_url, "the bench's stack is fully embedded"
    address = stack.temporal_address

    def profiles(label: str) -> Profiles:
        """py-spy on the worker, the API and the event consumers while a section's journeys run (`--profile DIR`;
        else nothing)."""
        ours = (("worker", stack.worker), ("api", stack.api), ("consumers", stack.consumers))
        pids = {
            name: component.process.pid if component is not None and component.process is not None else None
            for name, component in ours
        }
        return Profiles(args.profile, label, pids, args.profile_format)

    # a plain child for the whole run, stopped synchronously in `finally`; it needs only Temporal (its own process),
    # so blocking on its `ready` line stalls nothing it depends on
    noop_argv = [sys.executable, "-m", "prognet_dev.bench.noop_workflow", address]
    noop_worker = subprocess.Popen(noop_argv, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        assert noop_worker.stdout is not None  # stdout=PIPE
        assert noop_worker.stdout.readline().strip() == "ready"
        from temporalio.client import Client

        from prognet.payload_codec import data_converter

        client = await Client.connect(
            address, namespace=stack.temporal_namespace, data_converter=data_converter(stack.settings())
        )
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            print(f"cores: {os.cpu_count()}; warming up ...", flush=True)
            # Each saga's warm-up also gives a real journey whose history is its shape.
            if 1 in sections:
                reg_ids: list[str] = []
                await bench_registrations(stack.api_url, stack.maildir, 5, 5, reg_ids)
                await asyncio.sleep(1)  # the journey's last tasks (after the email was written) settle
                from models.names import email_message_id, email_workflow_id

                # the verification email is handed off by a local activity, not a child: named, not found in history
                verification = email_workflow_id(email_message_id(reg_ids[0], "verify"))
                reg_shape = await journey_shape(client, reg_ids[0], handed_over=[verification])
                await bench_noop_workflows(address, 5, 5, steps=NAIVE_STEPS["registration"])
                await bench_shaped_workflows(address, reg_shape.plan(), 5, 5)
            if 3 in sections:
                email_ids: list[str] = []
                await bench_raw_smtp(stack.smtp_host, stack.smtp_port, stack.maildir, 5, 5)
                await bench_email_pipeline(client, stack.maildir, 5, 5, email_ids)
                await asyncio.sleep(1)
                email_shape = await journey_shape(client, email_ids[0])
                await bench_shaped_workflows(address, email_shape.plan(), 5, 5)
            if 4 in sections:
                from models.names import billing_cycle_workflow_id, email_message_id, email_workflow_id
                from prognet_dev import SandboxAdmin
                from prognet_dev.bench import billing

                stripe_admin = SandboxAdmin(stack.stripe_api_base, timeout=60)
                bn = args.billing
                print(f"billing: creating {bn} + {BILLING_WARMUP} tenants with Stripe customers ...", flush=True)
                billing_subs = await billing.create_billing_tenants(stack, bn + BILLING_WARMUP)
                # the customers' webhooks (customer.created) are delivered before any cycle is timed
                await stripe_admin.wait_for_webhooks(timeout=billing.webhook_timeout(bn))
                warm = await billing.run_cycles(client, billing_subs[bn:], stack.maildir, 60)
                await billing.verify_run(stack, stripe_admin, warm)
                warm_cycle = billing_cycle_workflow_id(billing_subs[bn].subscription_id, 0)
                # its receipt is started by a local activity, not as a child: followed by its id
                billing_shape = await journey_shape(
                    client, warm_cycle, handed_over=[email_workflow_id(email_message_id(warm_cycle, "receipt"))]
                )
                await bench_noop_workflows(address, BILLING_WARMUP, BILLING_WARMUP, steps=NAIVE_STEPS["billing"])
                await bench_shaped_workflows(
                    address, billing_shape.plan(), BILLING_WARMUP, BILLING_WARMUP, time_children=False
                )

            if 1 in sections:
                n = args.sagas
                await settle()
                with CpuMeter(n) as naive_cpu:
                    t_naive = await bench_noop_workflows(
                        address, n, args.concurrency, steps=NAIVE_STEPS["registration"]
                    )
                await settle()
                with CpuMeter(n) as shaped_cpu:
                    t_shaped = await bench_shaped_workflows(address, reg_shape.plan(), n, args.concurrency)
                await settle()
                with profiles("registration") as reg_profiles, CpuMeter(n) as reg_cpu:
                    t_reg = await bench_registrations(stack.api_url, stack.maildir, n, args.concurrency)
                figures["registration"] = saga_section(n / t_reg, n / t_naive, n / t_shaped, reg_shape)
                phases = {"naive": naive_cpu.phase, "same_shape": shaped_cpu.phase, "journey": reg_cpu.phase}
                cpu_figures, budgets = section_cpu(
                    phases, targets["registration"], {"argon2 hash": argon2_hash_cpu_ms()}
                )
                figures["registration"].update(cpu_figures)
                cpu_lines["registration"] = _cpu_lines(phases, budgets, {}) + _profile_lines(reg_profiles)

            if 2 in sections:
                raw_n = args.logins
                await settle()
                with RoundTrips() as trips_idle:
                    await asyncio.sleep(ROUND_TRIPS_IDLE_SECONDS)
                await settle()
                with CpuMeter(raw_n) as argon2_meter:
                    t_raw = bench_raw_argon2(raw_n)
                await settle()
                with RoundTrips() as trips_argon2:
                    await hash_as_the_api_does(ROUND_TRIPS_HASHES)
                argon2_cpu = argon2_meter.phase.ms_per_unit.get("bench client", 0.0)
                emails = await create_active_users(stack.database_url, 20)
                await settle()
                idle = await idle_healthz(stack.api_url, IDLE_PROBE_SECONDS)
                await settle()
                api_pid = _api_pid(stack)
                api_loop_before = main_thread_cpu(api_pid) if api_pid is not None else None
                with (
                    RoundTrips(own_process=True) as trips_storm,
                    profiles("logins") as login_profiles,
                    CpuMeter(args.logins) as login_meter,
                ):
                    t_login, under_load = await bench_logins(stack.api_url, emails, args.logins, args.login_concurrency)
                # a figure only if the API that was measured is still the one running (not restarted meanwhile)
                api_loop_after = (
                    main_thread_cpu(api_pid) if api_pid is not None and _api_pid(stack) == api_pid else None
                )
                # the round trips measured beside the storm are not the logins' work
                login_cpu = {r: ms for r, ms in login_meter.phase.ms_per_unit.items() if r not in NOT_COUNTED}
                raw_rate, login_rate = raw_n / t_raw, args.logins / t_login
                p99_idle, p99_storm = _pct(idle, 0.99) * 1000, _pct(under_load, 0.99) * 1000
                rt_idle, rt_argon2 = _pct(trips_idle.latencies, 0.99) * 1000, _pct(trips_argon2.latencies, 0.99) * 1000
                rt_storm = _pct(trips_storm.latencies, 0.99) * 1000
                floor = max(rt_argon2, rt_storm) / p99_idle
                figures["logins"] = {
                    "rate": login_rate,
                    "argon2_rate": raw_rate,
                    "ratio": login_rate / raw_rate,
                    "healthz_p99_idle_ms": p99_idle,
                    "healthz_p99_storm_ms": p99_storm,
                    "healthz_p99_ratio": p99_storm / p99_idle,
                    # what the machine does to that ratio: a bare round trip between two processes, at rest and
                    # while the answering one fills the cores with argon2 hashed as the API does (roundtrip.py)
                    "round_trip_p99_idle_ms": rt_idle,
                    "round_trip_p99_argon2_ms": rt_argon2,
                    "round_trip_p99_ratio": rt_argon2 / rt_idle,
                    # and between two processes of their own during the storm: what its load alone does
                    "round_trip_p99_storm_ms": rt_storm,
                    # a probe is such a round trip plus HTTP: under either load its p99 is not expected to be lower
                    "healthz_p99_ratio_floor": floor,
                    "healthz_p99_out_of_reach": floor > HEALTHZ_P99_TARGET,
                    # the API's event loop (its main thread) per login: every probe waits behind what it is doing
                    "api_loop_cpu_ms_per_login": None
                    if api_loop_before is None or api_loop_after is None
                    else round((api_loop_after - api_loop_before) * 1000 / args.logins, 2),
                    # where the CPU goes: argon2 alone, and each process's share per login during the storm
                    "argon2_cpu_ms_per_verify": argon2_cpu,
                    "cpu_ms_per_login": login_cpu,
                }
                phases = {"argon2": argon2_meter.phase, "journey": login_meter.phase}
                cpu_figures, budgets = section_cpu(phases, targets["logins"], {"argon2 verify": argon2_cpu})
                figures["logins"] |= {k: v for k, v in cpu_figures.items() if k in ("cpu_phases", "cpu_ceiling")}
                cpu_lines["logins"] = _cpu_lines(
                    phases, budgets, {"argon2": "raw argon2", "journey": "login"}, "login"
                ) + _profile_lines(login_profiles)

            if 3 in sections:
                en = args.emails
                await settle()
                with CpuMeter(en) as smtp_cpu:
                    t_smtp = await bench_raw_smtp(
                        stack.smtp_host, stack.smtp_port, stack.maildir, en, args.smtp_concurrency
                    )
                await settle()
                with CpuMeter(en) as naive_cpu:
                    t_naive = await bench_noop_workflows(address, en, args.concurrency, steps=NAIVE_STEPS["emails"])
                await settle()
                with CpuMeter(en) as shaped_cpu:
                    t_shaped = await bench_shaped_workflows(address, email_shape.plan(), en, args.concurrency)
                await settle()
                with profiles("emails") as email_profiles, CpuMeter(en) as pipe_cpu:
                    t_pipe = await bench_email_pipeline(client, stack.maildir, en, args.concurrency)
                figures["emails"] = saga_section(
                    en / t_pipe,
                    en / t_naive,
                    en / t_shaped,
                    email_shape,
                    raw_smtp_rate=en / t_smtp,
                    raw_smtp_ratio=(en / t_pipe) / (en / t_smtp),
                )
                phases = {
                    "raw_smtp": smtp_cpu.phase,
                    "naive": naive_cpu.phase,
                    "same_shape": shaped_cpu.phase,
                    "journey": pipe_cpu.phase,
                }
                cpu_figures, budgets = section_cpu(phases, targets["emails"])
                figures["emails"].update(cpu_figures)
                cpu_lines["emails"] = _cpu_lines(phases, budgets, {"raw_smtp": "raw SMTP"}) + _profile_lines(
                    email_profiles
                )

            if 4 in sections:
                bn = args.billing
                assert stripe_admin is not None  # opened in the warm-up above
                await stripe_admin.wait_for_webhooks(timeout=billing.webhook_timeout(bn))
                base_n = min(bn, BILLING_BASELINE_MAX)
                await settle()
                with CpuMeter(base_n) as naive_cpu:
                    t_naive = await bench_noop_workflows(address, base_n, base_n, steps=NAIVE_STEPS["billing"])
                await settle()
                with CpuMeter(base_n) as shaped_cpu:
                    t_shaped = await bench_shaped_workflows(
                        address, billing_shape.plan(), base_n, base_n, time_children=False
                    )
                await settle()
                # the cycles' CPU counts until the last receipt is in the Maildir (run_cycles waits for them)
                with (
                    profiles("billing") as billing_profiles,
                    CpuMeter(bn) as cycle_cpu,
                    billing.ConnectionPeak(stack.migration_database_url) as connections,
                ):
                    billing_run = await billing.run_cycles(client, billing_subs[:bn], stack.maildir, max(120.0, bn))
                billing_checks = await billing.verify_run(stack, stripe_admin, billing_run)
                figures["billing"] = saga_section(
                    bn / billing_run.seconds, base_n / t_naive, base_n / t_shaped, billing_shape
                )
                phases = {"naive": naive_cpu.phase, "same_shape": shaped_cpu.phase, "journey": cycle_cpu.phase}
                cpu_figures, budgets = section_cpu(phases, targets["billing"])
                figures["billing"].update(cpu_figures)
                cpu_lines["billing"] = _cpu_lines(phases, budgets, {"journey": "cycle+rcpt"}) + _profile_lines(
                    billing_profiles
                )
                receipt_rate = bn / billing_run.seconds_with_receipts

            realtime_lines: list[str] = []
            if sections & {5, 6, 7}:
                from prognet_dev.bench import events, realtime

                assert stack.redis_url, "the bench's stack is fully embedded"
                tenants = await events.create_tenants(stack, http, 4)
                if 5 in sections:
                    realtime_lines += await events.bench_events(stack, http, tenants, args)
                if 6 in sections:
                    await events.quiesce(stack.redis_url)
                    realtime_lines += await realtime.bench_sse(stack.api_url, stack.redis_url, tenants, args)
                if 7 in sections:
                    await events.quiesce(stack.redis_url)
                    realtime_lines += await realtime.bench_webhooks(tenants, stack, args)

            if 8 in sections:  # last: it restarts the worker and the API
                from prognet_dev.bench.telemetry import bench_telemetry

                realtime_lines += await bench_telemetry(stack, args)

        print()
        if 1 in sections:
            _print_saga(
                1,
                f"registration, HTTP → verification email in the Maildir ({n} each, concurrency {args.concurrency})",
                figures["registration"],
                reg_shape,
                NAIVE_STEPS["registration"],
                "registration saga through HTTP",
                cpu_lines["registration"],
            )
        if 2 in sections:
            lf = figures["logins"]
            print(f"2. logins ({args.logins}, concurrency {args.login_concurrency})")
            print(f"   raw argon2 verifications ({cores()} threads)     : {raw_rate:8.1f} /s")
            print(
                f"   logins through HTTP                       : {login_rate:8.1f} /s"
                f"   ratio {lf['ratio']:.2f} of raw argon2"
            )
            print(
                f"   GET /healthz p50/p99 idle                 : {_pct(idle, 0.5) * 1000:6.1f} / "
                f"{p99_idle:6.1f} ms  ({len(idle)} probes)"
            )
            print(
                f"   GET /healthz p50/p99 during login storm   : {_pct(under_load, 0.5) * 1000:6.1f} / "
                f"{p99_storm:6.1f} ms  ({len(under_load)} probes, p99 ratio {lf['healthz_p99_ratio']:.1f}x idle)"
            )
            print(f"   mean healthz during storm                 : {statistics.mean(under_load) * 1000:6.1f} ms")
            print(
                f"   bare round trip between two processes p99: {lf['round_trip_p99_idle_ms']:6.2f} ms idle, "
                f"{lf['round_trip_p99_argon2_ms']:.2f} while the API's hashing fills the cores "
                f"({lf['round_trip_p99_ratio']:.1f}x; {len(trips_idle.latencies)} / {len(trips_argon2.latencies)})"
            )
            print(
                f"   bare round trip during the storm p99       : {lf['round_trip_p99_storm_ms']:6.2f} ms  (two "
                f"processes of their own; {len(trips_storm.latencies)} round trips)"
            )
            reach = "OUT OF REACH here under this load" if lf["healthz_p99_out_of_reach"] else "within reach"
            print(
                f"   /healthz p99 ratio <= {HEALTHZ_P99_TARGET:g}: floor {lf['healthz_p99_ratio_floor']:.1f} "
                f"(a probe is a round trip plus HTTP: the slower round trip's p99, under hashing or during the storm, "
                f"/ the idle /healthz p99): {reach}"
            )
            loop_ms = lf["api_loop_cpu_ms_per_login"]
            print(
                "   API event loop CPU per login (main thread): "
                + ("unknown (the API is gone)" if loop_ms is None else f"{loop_ms:6.1f} ms  (probes included)")
            )
            print(f"   CPU per raw argon2 verification           : {argon2_cpu:6.1f} ms")
            print(
                f"   CPU per login during the storm, by process: {sum(login_cpu.values()):6.1f} ms  ("
                + ", ".join(f"{role} {ms:.1f}" for role, ms in login_cpu.items())
                + "; probes included)"
            )
            for cpu_line in cpu_lines["logins"]:
                print(cpu_line)
        if 3 in sections:
            ef = figures["emails"]
            _print_saga(
                3,
                f"emails, start → Maildir ({args.emails} each; pipeline rate limit raised to "
                f"EMAIL_MAX_PER_SECOND={EMAIL_BENCH_MAX_PER_SECOND} for this run)",
                ef,
                email_shape,
                NAIVE_STEPS["emails"],
                "EmailDelivery workflows, start→Maildir",
                [],
            )
            print(
                f"   raw aiosmtplib sends to the sink (conc. {args.smtp_concurrency}) : {ef['raw_smtp_rate']:8.1f} /s"
                f"   pipeline ratio {ef['raw_smtp_ratio']:.2f} of raw SMTP"
            )
            for cpu_line in cpu_lines["emails"]:
                print(cpu_line)
        if 4 in sections:
            _print_saga(
                4,
                f"billing cycles ({bn} subscriptions falling due at once, all started together; "
                f"plan {billing.BILLING_PLAN_ID}, {billing.PAYMENT_METHOD}; start → all results)",
                figures["billing"],
                billing_shape,
                NAIVE_STEPS["billing"],
                "BillingCycle workflows, start→results",
                [],
            )
            scheduled = ", ".join(billing_shape.activity_types) or "none (every step is a local activity)"
            print(f"   activities: {scheduled}")
            print(
                f"   the same, until every receipt is in the Maildir : {receipt_rate:8.1f} /s"
                f"   ratio {receipt_rate / figures['billing']['naive_baseline_rate']:.2f} of naive"
            )
            for line in billing.scale_lines(stack, billing_run, connections):
                print(line)
            print(f"   checked: {'; '.join(billing_checks)}")
            for cpu_line in cpu_lines["billing"]:
                print(cpu_line)
        for line in realtime_lines:
            print(line)
        if args.json:
            write_json(args.json, figures)
            print(f"figures written to {args.json}")
    finally:
        if stripe_admin is not None:
            await stripe_admin.aclose()
        noop_worker.terminate()
        noop_worker.wait(10)
        try:
            await stack.stop()
        finally:
            services.stop()


def _profile_lines(profiles) -> list[str]:
    line = profiles.line()
    return [line] if line else []


def write_json(path: Path, figures: dict[str, dict]) -> None:
    """`{"sections": {name: {figure: value}}}`, the sections measured in this run."""
    import json

    path.write_text(json.dumps({"sections": figures}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prognet bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=200, help="registrations and bare workflows each")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--login-concurrency", type=int, default=16)
    parser.add_argument("--emails", type=int, default=300, help="emails through the pipeline and raw SMTP sends each")
    parser.add_argument("--smtp-concurrency", type=int, default=20, help="concurrent raw aiosmtplib sends")
    parser.add_argument(
        "--billing",
        type=int,
        default=50,
        help=f"subscriptions falling due at once (and bare workflows each, at most {BILLING_BASELINE_MAX})",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the worker and the API with py-spy while each saga's journeys run, into DIR "
        "(e.g. DIR/billing-worker.svg; needs ptrace rights over them)",
    )
    parser.add_argument(
        "--profile-format", choices=("flamegraph", "speedscope", "raw"), default="flamegraph", help="py-spy's format"
    )
    parser.add_argument("--events", type=int, default=2000, help="events through relay and projector (section 5)")
    parser.add_argument("--event-batch", type=int, default=20, help="events per inserting transaction (5, 7)")
    parser.add_argument("--reads", type=int, default=200, help="GET /v1/tenants/{id} per read source (5)")
    # One API process serves them all: streams read Redis through their own pool (SSE_REDIS_MAX_CONNECTIONS).
    parser.add_argument("--sse-streams", type=int, default=200, help="concurrent SSE streams (section 6)")
    parser.add_argument("--sse-connect-concurrency", type=int, default=20, help="SSE streams being opened at once (6)")
    parser.add_argument("--sse-events", type=int, default=30, help="events each SSE stream receives (6)")
    parser.add_argument("--sse-interval", type=float, default=0.1, help="seconds between those events' commits (6)")
    parser.add_argument("--webhooks", type=int, default=150, help="webhook deliveries and raw POSTs each (7)")
    parser.add_argument("--webhook-concurrency", type=int, default=20, help="concurrent raw POSTs (7)")
    parser.add_argument("--telemetry-sagas", type=int, default=100, help="registrations per phase (section 8)")
    parser.add_argument("--telemetry-billing", type=int, default=30, help="billing cycles per phase (8)")
    parser.add_argument(
        "--sections",
        "--only",
        type=parse_sections,
        default="1,2,3,4,5,6,7,8",
        help="which figures to measure, by number or name, e.g. 3, 1,3 or billing "
        "(sagas, logins, emails, billing, events, sse, webhooks, telemetry; default: all)",
    )
    asyncio.run(run(parser.parse_args(argv)))
    return 0

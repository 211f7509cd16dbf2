"""`prognet chaos` (`make chaos`): the multi-replica topology on one machine, under faults, checked for losses.

A supervised embedded stack with 2 API replicas behind the round-robin front and 3 workers takes a mixed load of
sagas through the front: registrations (two thirds verified, one third left waiting for verification), tenants,
subscriptions on the 60-second plan with paid (`pm_card_visa`) and declined (`pm_card_chargeDeclined`) cards, each
cancelled at once when it is active or past due, and invitations; some addresses carry `+fail421`, which the SMTP
sink refuses twice before accepting. Clients open a connection per request (so the front spreads them) and retry a
503 or a lost connection with the same Idempotency-Key (prognet_dev/load.py).

The full form first runs two calm phases of the same size, with 1 worker (workers 2 and 3 stopped) and then with 3,
for the throughput figures; then the faulted phase: at random points of its progress workers are SIGKILLed, one API
replica is SIGKILLed, Redis is restarted, and the supervisor brings each back. The short form (the test in
tests/integration/test_chaos.py) runs only a small faulted phase with one fault of each kind.

Afterwards the stack is left to settle and checked from PostgreSQL, the Stripe sandbox, the SMTP sink's Maildir and
Temporal's visibility: every saga closed or deliberately waiting, no duplicates, no orphans, every accepted request
accounted for. `ChaosReport.problems()` lists whatever is wrong; the command exits 1 if anything is.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.policy
import mailbox
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

import httpx

from .load import Observed, RetryingClient
from .smtp_sink import read_messages
from .stack import EmbeddedStack, stack_settings
from .supervisor import RestartPolicy

PASSWORD = "chaos test password 123"
PLAN = "dev-minutely"  # no trial: subscribing charges at once
PAID, DECLINED = "pm_card_visa", "pm_card_chargeDeclined"
WORKERS, API_REPLICAS, OWNERS = 3, 2, 3
# Email delivery tuned as in the integration tests: quick retries after a 421, a send rate that is no bottleneck.
FAST_EMAIL = {
    "SMTP_TIMEOUT_SECONDS": "3",
    "EMAIL_RETRY_INITIAL_SECONDS": "0.3",
    "EMAIL_RETRY_MAX_INTERVAL_SECONDS": "1.5",
    "EMAIL_RETRY_MAX_ATTEMPTS": "40",
    "EMAIL_MAX_PER_SECOND": "50",
    # the tests' argon2 cost: on two shared cores the default (~150 ms a hash) would be most of what is measured
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_COST_KIB": "8192",
    "ARGON2_PARALLELISM": "1",
    # the owners log in once, at the start: on a loaded machine the full run outlasts the default 15 minutes
    "ACCESS_TOKEN_TTL_SECONDS": "10800",
}
# Restart a killed process half a second later; many restarts in a run are the point, not a crash loop.
POLICY = RestartPolicy(initial_delay=0.5, max_delay=2.0, max_restarts=30, poll_interval=0.1)
# Running workflows that wait on purpose: for a verification, an acceptance, the next period, a new card.
MAY_WAIT = {"Registration", "Invitation", "Subscription", "BillingCycle", "BillingTrigger"}
STUCK_SAGA_STATUSES = {"compensating", "awaiting_operator", "failed"}
# Closed on purpose: cancelling a past-due subscription cancels the billing cycle that waits for a new card.
MAY_BE_CANCELED = {"BillingCycle"}


@dataclass(frozen=True)
class ChaosPlan:
    sagas: int  # saga-starting requests in the faulted phase
    calm_sagas: int = 0  # in each calm phase (1 worker, then 3); 0: no calm phases
    worker_kills: int = 3
    api_kills: int = 1
    redis_restarts: int = 1
    concurrency: int = 6  # jobs in flight
    job_timeout: float = 120.0  # one saga reaching its expected state, retries included
    settle_timeout: float = 120.0
    faults_within: tuple[float, float] = (0.1, 0.75)  # faults happen between these fractions of the sagas sent
    seed: int | None = None


FULL = ChaosPlan(sagas=300, calm_sagas=60, worker_kills=4, concurrency=12)
# Early faults: activities a killed worker held are retried after their start-to-close timeout (30 s), which the
# rest of the short load then overlaps.
SHORT = ChaosPlan(sagas=40, worker_kills=1, concurrency=16, faults_within=(0.05, 0.35))


@dataclass
class Phase:
    name: str
    workers: int
    sagas: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.sagas / self.seconds if self.seconds else 0.0


@dataclass
class Accepted:
    """Every saga-starting request the API accepted (202), by kind."""

    registrations: dict[str, tuple[str, bool]] = field(default_factory=dict)  # email -> (user_id, to be verified)
    tenants: dict[str, str] = field(default_factory=dict)  # tenant_id -> slug
    subscriptions: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (tenant_id, payment method)
    invitations: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (tenant_id, email)
    failures: list[str] = field(default_factory=list)  # a request never accepted, a saga that never got there

    def count(self) -> int:
        return len(self.registrations) + len(self.tenants) + len(self.subscriptions) + len(self.invitations)


@dataclass
class ChaosReport:
    plan: ChaosPlan
    phases: list[Phase] = field(default_factory=list)
    accepted: Accepted = field(default_factory=Accepted)
    answers: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    resets: int = 0
    faults: list[str] = field(default_factory=list)  # what was done, when
    per_replica: dict[str, int] = field(default_factory=dict)  # connections the front gave each replica
    workflows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, status) -> count
    stuck: list[str] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    resent_after_cut: list[str] = field(default_factory=list)  # emails re-sent after a sender died mid-reply
    orphans: dict[str, list[str]] = field(default_factory=dict)
    unaccounted: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503
    latency: dict[str, list[float]] = field(default_factory=dict)  # job kind -> seconds until its sagas got there
    app_errors: list[str] = field(default_factory=list)  # the app's ERROR log lines (a 500's traceback is in one)

    def problems(self) -> list[str]:
        found = [f"not accepted / never done: {x}" for x in self.accepted.failures]
        found += [f"stuck: {x}" for x in self.stuck]
        found += [f"duplicate {kind}: {x}" for kind, xs in self.duplicates.items() for x in xs]
        found += [f"orphan {kind}: {x}" for kind, xs in self.orphans.items() for x in xs]
        found += [f"unaccounted: {x}" for x in self.unaccounted]
        found += [f"server error: {x}" for x in self.server_errors]
        expected = self.plan.worker_kills + self.plan.api_kills + self.plan.redis_restarts
        if len(self.faults) != expected:
            found.append(f"{len(self.faults)} faults injected, {expected} planned")
        return found

    def text(self) -> str:
        a = self.accepted
        lines = ["", "Chaos report", "============"]
        lines.append(f"topology: {API_REPLICAS} API replicas behind the front, {WORKERS} workers")
        for phase in self.phases:
            lines.append(
                f"phase {phase.name:<22} {phase.workers} worker(s): {phase.sagas:>4} sagas in {phase.seconds:6.1f} s"
                f" = {phase.per_second:5.2f} sagas/s"
            )
        lines.append(
            f"accepted (202): {a.count()} sagas: {len(a.registrations)} registrations "
            f"({sum(1 for _, v in a.registrations.values() if v)} verified), {len(a.tenants)} tenants, "
            f"{len(a.subscriptions)} subscriptions "
            f"({sum(1 for _, pm in a.subscriptions.values() if pm == DECLINED)} declined), "
            f"{len(a.invitations)} invitations"
        )
        lines.append(
            "requests through the front per replica: " + ", ".join(f"{k} {v}" for k, v in self.per_replica.items())
        )
        lines.append(
            "answers: "
            + ", ".join(f"{s}: {n}" for s, n in sorted(self.answers.items()))
            + f"; connection errors {self.resets}"
        )
        lines.append(
            "time until done, median/max: "
            + ", ".join(
                f"{kind} {sorted(xs)[len(xs) // 2]:.1f}/{max(xs):.1f} s" for kind, xs in sorted(self.latency.items())
            )
        )
        lines.append("faults: " + ("; ".join(self.faults) or "none"))
        lines.append("workflows: " + ", ".join(f"{t} {s.lower()} {n}" for (t, s), n in sorted(self.workflows.items())))
        lines.append(f"stuck or failed sagas: {len(self.stuck)}")
        lines.append("duplicates: " + ", ".join(f"{k} {len(v)}" for k, v in self.duplicates.items()))
        if self.resent_after_cut:
            lines.append(
                "emails sent again because their sender was killed after the relay stored them but before it read "
                "the relay's reply (SMTP's at-least-once edge, same Message-ID): " + ", ".join(self.resent_after_cut)
            )
        lines.append("orphans: " + ", ".join(f"{k} {len(v)}" for k, v in self.orphans.items()))
        lines.append(f"accepted but unaccounted for: {len(self.unaccounted)}; never accepted: {len(a.failures)}")
        problems = self.problems()
        lines.append("RESULT: " + ("clean" if not problems else f"{len(problems)} problem(s)"))
        lines += [f"  - {p}" for p in problems[:40]]
        if self.server_errors and self.app_errors:  # what the 500s were: the run's data dir is gone by now
            lines.append(
                f"the app's ERROR log lines ({len(self.app_errors)}), the first {min(3, len(self.app_errors))}:"
            )
            lines += [f"  {line[:3000]}" for line in self.app_errors[:3]]
        return "\n".join(lines)


# --- the load ------------------------------------------------------------------------------------------------


@dataclass
class Owner:
    email: str
    headers: dict[str, str]
    tenant_id: str  # their first tenant: where their invitations go


class Load:
    def __init__(self, stack: EmbeddedStack, http: httpx.AsyncClient, plan: ChaosPlan, rng: random.Random) -> None:
        self.stack = stack
        self.client = RetryingClient(http, Observed(), retry_deadline=plan.job_timeout, max_retry_wait=3.0)
        self.plan = plan
        self.rng = rng
        self.accepted = Accepted()
        self.owners: list[Owner] = []
        self.started = 0  # saga-starting requests sent so far (drives the fault schedule)
        self.seq = 0
        self.mail: dict[str, str] = {}  # recipient -> plain text of their first message
        self._scanned: set[str] = set()  # Maildir keys already read
        self._scanning = asyncio.Lock()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)  # job kind -> seconds per job

    # sagas
    async def start(self, what: str, url: str, body: dict, headers: dict[str, str] | None = None) -> dict | None:
        """POST a saga start, retried with one Idempotency-Key until it is accepted; its body, or None."""
        self.started += 1
        key = {"Idempotency-Key": str(uuid.uuid4())}
        r = await self.client.until_not_503(what, "POST", url, json=body, headers={**(headers or {}), **key})
        if r is None or r.status_code != 202:
            self.accepted.failures.append(f"{what}: {r.status_code if r is not None else 'no answer'} {_text(r)}")
            return None
        return r.json()

    def new_email(self, tag: str) -> str:
        self.seq += 1
        fail = "+fail421" if self.seq % 5 == 0 else ""  # the sink refuses these twice, then accepts
        return f"chaos-{tag}{fail}-{uuid.uuid4().hex[:10]}@example.com"

    async def registration(self, verify: bool) -> str | None:
        email = self.new_email("reg")
        body = await self.start("register", "/v1/auth/register", {"email": email, "password": PASSWORD})
        if body is None:
            return None
        self.accepted.registrations[email] = (body["user_id"], verify)
        msg = await self.mail_to(email)
        if msg is None or not verify:
            return email
        token = re.search(r"[?&]token=([A-Za-z0-9_\-]+)", msg)
        assert token, msg
        r = await self.client.until_not_503("verify", "POST", "/v1/auth/verify", json={"token": token.group(1)})
        # 202: still verifying; 409: an earlier try whose answer was lost used the token (a client logs in then)
        if r is None or r.status_code not in (200, 202, 409):
            self.accepted.failures.append(f"verify {email}: {r.status_code if r is not None else 'no answer'}")
        return email

    async def tenant(self, headers: dict[str, str]) -> str | None:
        slug = f"chaos-{uuid.uuid4().hex[:12]}"
        body = await self.start("tenant", "/v1/tenants", {"name": "Chaos", "slug": slug}, headers)
        if body is None:
            return None
        tenant_id = body["tenant_id"]
        self.accepted.tenants[tenant_id] = slug
        ok = await self.wait_for(
            f"tenant {tenant_id} active", f"/v1/tenants/{tenant_id}", headers, lambda j: j["status"] == "active"
        )
        return tenant_id if ok else None

    async def subscription(self, headers: dict[str, str], tenant_id: str, payment_method: str) -> None:
        url = f"/v1/tenants/{tenant_id}/subscriptions"
        body = await self.start("subscribe", url, {"plan": PLAN, "payment_method": payment_method}, headers)
        if body is None:
            return
        sub_id = body["subscription_id"]
        self.accepted.subscriptions[sub_id] = (tenant_id, payment_method)
        wanted = "active" if payment_method == PAID else "past_due"
        if not await self.wait_for(
            f"subscription {sub_id} {wanted}", f"{url}/{sub_id}", headers, lambda j: j["status"] == wanted
        ):
            return
        # Cancelled now (a paid one with its prorated refund): a 60-second plan left running would bill every
        # subscription of the run each minute, a load that grows with the run.
        r = await self.client.until_not_503(
            "cancel", "POST", f"{url}/{sub_id}/cancel", json={"at_period_end": False}, headers=headers
        )
        if r is None or r.status_code not in (200, 409):  # 409: an earlier try whose answer was lost ended it
            self.accepted.failures.append(f"cancel {sub_id}: {r.status_code if r is not None else 'no answer'}")
            return
        await self.wait_for(
            f"subscription {sub_id} canceled", f"{url}/{sub_id}", headers, lambda j: j["status"] == "canceled"
        )

    async def invitation(self, owner: Owner) -> None:
        email = self.new_email("inv")
        url = f"/v1/tenants/{owner.tenant_id}/invitations"
        body = await self.start("invite", url, {"email": email, "role": "member"}, owner.headers)
        if body is None:
            return
        self.accepted.invitations[body["invitation_id"]] = (owner.tenant_id, email)
        await self.mail_to(email)

    # waiting for the effect of a saga
    async def wait_for(self, what: str, url: str, headers: dict[str, str], ok: Callable[[dict], bool]) -> bool:
        deadline = time.monotonic() + self.plan.job_timeout
        while time.monotonic() < deadline:
            r = await self.client.call("poll", "GET", url, headers=headers)
            if r is not None and r.status_code == 200 and ok(r.json()):
                return True
            await asyncio.sleep(0.3)
        self.accepted.failures.append(f"{what}: not within {self.plan.job_timeout:.0f} s")
        return False

    async def mail_to(self, address: str) -> str | None:
        """The plain-text body of the first message the SMTP sink received for `address`."""
        deadline = time.monotonic() + self.plan.job_timeout
        while time.monotonic() < deadline:
            if address not in self.mail:
                async with self._scanning:  # one reader of the Maildir at a time, each file parsed once
                    await asyncio.to_thread(self._scan_maildir)
            if address in self.mail:
                return self.mail[address]
            await asyncio.sleep(0.3)
        self.accepted.failures.append(f"email to {address}: none within {self.plan.job_timeout:.0f} s")
        return None

    def _scan_maildir(self) -> None:
        path = self.stack.maildir
        if not (path / "new").is_dir():
            return
        box = mailbox.Maildir(path, create=False)
        for key in box.iterkeys():
            if key in self._scanned:
                continue
            try:
                msg = BytesParser(policy=email.policy.default).parsebytes(box.get_bytes(key))
            except (KeyError, FileNotFoundError):
                continue
            self._scanned.add(key)
            body = msg.get_body(("plain",))
            self.mail.setdefault(str(msg["To"]), body.get_content() if body is not None else "")

    # setup and jobs
    async def add_owner(self) -> None:
        email = await self.registration(verify=True)
        assert email is not None, self.accepted.failures
        r = await self.client.until_not_503(
            "login", "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert r is not None and r.status_code == 200, _text(r)
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        tenant_id = await self.tenant(headers)
        assert tenant_id is not None, self.accepted.failures
        self.owners.append(Owner(email, headers, tenant_id))

    async def job(self, i: int) -> int:
        """Job i of a phase; returns how many sagas it started. Four kinds in turn."""
        owner = self.owners[i % len(self.owners)]
        began = time.monotonic()
        kind, sagas = (
            ("registration", 1) if i % 4 in (0, 1) else ("tenant+subscription", 2) if i % 4 == 2 else ("invitation", 1)
        )
        if kind == "registration":
            await self.registration(verify=i % 3 != 0)
        elif kind == "invitation":
            await self.invitation(owner)
        elif (tenant_id := await self.tenant(owner.headers)) is not None:
            await self.subscription(owner.headers, tenant_id, DECLINED if i % 8 == 6 else PAID)
        self.latency[kind].append(time.monotonic() - began)
        return sagas

    async def phase(self, phase: Phase, sagas: int) -> None:
        """Jobs worth `sagas` sagas, `concurrency` at a time; timed until each saga reached its expected state."""
        sem = asyncio.Semaphore(self.plan.concurrency)
        counted = 0
        tasks = []
        began = time.monotonic()

        async def one(i: int) -> None:
            nonlocal counted
            try:
                n = await self.job(i)
                counted += n  # not `counted += await ...`: that reads `counted` before the await
            finally:
                sem.release()

        i = planned = 0
        while planned < sagas:
            await sem.acquire()
            tasks.append(asyncio.create_task(one(i)))
            planned += 2 if i % 4 == 2 else 1
            i += 1
        await asyncio.gather(*tasks)
        phase.sagas, phase.seconds = counted, time.monotonic() - began


def _text(r: httpx.Response | None) -> str:
    return r.text[:200] if r is not None else ""


# --- the faults ------------------------------------------------------------------------------------------------


class Faults:
    """Kills processes at random points of the faulted phase's progress; the supervisor brings each back."""

    def __init__(self, stack: EmbeddedStack, backs: Counter[str], rng: random.Random) -> None:
        self.stack = stack
        self.backs = backs  # component -> how often the supervisor said "<component> is back"
        self.rng = rng

    async def run(self, plan: ChaosPlan, load: Load, sagas: int, done: asyncio.Event, report: ChaosReport) -> None:
        kinds = ["worker"] * plan.worker_kills + ["api"] * plan.api_kills + ["redis"] * plan.redis_restarts
        self.rng.shuffle(kinds)
        points = sorted(self.rng.uniform(*plan.faults_within) * sagas for _ in kinds)
        first, began = load.started, time.monotonic()
        for kind, point in zip(kinds, points, strict=True):
            while load.started - first < point and not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.1)
            if done.is_set():
                return
            name = await self.inject(kind)
            report.faults.append(f"{name} at {time.monotonic() - began:.0f} s ({load.started - first} sagas)")
            await self.back(name)

    async def inject(self, kind: str) -> str:
        stack = self.stack
        if kind == "worker":
            component = self.rng.choice(stack.workers)
            assert component.process is not None
            component.process.signal_group(signal.SIGKILL)
            return f"SIGKILL {component.name}"
        if kind == "api":
            component = self.rng.choice(stack.apis)
            assert component.process is not None
            component.process.signal_group(signal.SIGKILL)
            return f"SIGKILL {component.name}"
        assert stack.redis is not None and stack.redis.process is not None
        stack.redis.process.signal_group(signal.SIGTERM)  # a clean restart: Redis writes its AOF and exits
        return "restart Redis"

    async def back(self, fault: str, timeout: float = 90.0) -> None:
        component = fault.split(" ", 1)[1]
        seen = self.backs[component]
        deadline = time.monotonic() + timeout
        while self.backs[component] <= seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{component} did not come back within {timeout:.0f} s")
            await asyncio.sleep(0.1)


# --- the checks ------------------------------------------------------------------------------------------------


async def _workflows(stack: EmbeddedStack) -> list[tuple[str, str, str, str | None]]:
    """(workflow id, type, status, SagaStatus) of every workflow Temporal knows."""
    from temporalio.client import Client

    from models.names import SA_SAGA_STATUS

    client = await Client.connect(stack.temporal_address or "", namespace=stack.temporal_namespace)
    found = []
    async for wf in client.list_workflows(""):
        status = wf.status.name if wf.status is not None else "UNKNOWN"
        found.append((wf.id, wf.workflow_type, status, wf.typed_search_attributes.get(SA_SAGA_STATUS)))
    return found


def _stuck(workflows: list[tuple[str, str, str, str | None]]) -> list[str]:
    stuck = []
    for wf_id, kind, status, saga in workflows:
        if status == "RUNNING" and (kind not in MAY_WAIT or saga in STUCK_SAGA_STATUSES):
            stuck.append(f"{wf_id} ({kind}) running, saga {saga}")
        elif status not in ("RUNNING", "COMPLETED", "CONTINUED_AS_NEW") and not (
            status == "CANCELED" and kind in MAY_BE_CANCELED
        ):
            stuck.append(f"{wf_id} ({kind}) {status.lower()}")
    return stuck


async def settle(stack: EmbeddedStack, timeout: float) -> list[tuple[str, str, str, str | None]]:
    """Wait until no workflow is stuck (what is still running is waiting on purpose), or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        workflows = await _workflows(stack)
        if not _stuck(workflows) or time.monotonic() > deadline:
            return workflows
        await asyncio.sleep(1.0)


async def _explain_duplicate_email(stack: EmbeddedStack, message_id: str, messages: list) -> str:
    """What the tracking row says about a message that arrived more than once, and when each copy arrived."""
    import asyncpg

    arrivals = [str(msg["Received"]).rsplit(";", 1)[-1].strip() for msg in messages if msg["Message-ID"] == message_id]
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        row = await conn.fetchrow(
            "select template, state, attempts, last_reply, created_at, updated_at from email_messages where id = $1",
            uuid.UUID(message_id.strip("<>").split("@")[0]),
        )
    finally:
        await conn.close()
    return f"arrived {', '.join(arrivals)}; tracking row {dict(row) if row else None}"


async def check(stack: EmbeddedStack, load: Load, report: ChaosReport, workflows: list) -> None:
    import asyncpg

    accepted = load.accepted
    report.workflows = Counter((kind, status) for _, kind, status, _ in workflows)
    report.stuck = _stuck(workflows)
    running = {wf_id for wf_id, _, status, _ in workflows if status == "RUNNING"}
    assert stack.stripe is not None
    sandbox = stack.stripe.sandbox

    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        dup_users = await conn.fetch(
            "select lower(email) as k, count(*) as n from users group by 1 having count(*) > 1"
        )
        dup_tenants = await conn.fetch("select slug as k, count(*) as n from tenants group by 1 having count(*) > 1")
        users = {r["email"]: r for r in await conn.fetch("select id::text, lower(email) as email, status from users")}
        tenants = {r["id"]: r["status"] for r in await conn.fetch("select id::text, status from tenants")}
        subs = {r["id"]: r["status"] for r in await conn.fetch("select id::text, status from subscriptions")}
        invites = {r["id"]: r["status"] for r in await conn.fetch("select id::text, status from invitations")}
    finally:
        await conn.close()

    customers = Counter(c["metadata"].get("tenant_id") for c in sandbox.customers())
    intents: dict[str, set[str]] = collections.defaultdict(set)
    for event in sandbox.events("payment_intent.created"):
        intents[event["request"]["idempotency_key"] or "(none)"].add(event["data"]["object"]["id"])
    messages = read_messages(stack.maildir)
    message_ids = Counter(msg["Message-ID"] for msg in messages)
    # A sender killed after the sink stored its message but before it read the 250 cannot know the relay has it:
    # its retry sends the same Message-ID again. SMTP offers no way to close that moment; any other copy is ours.
    assert stack.smtp is not None
    cut = stack.smtp.sink.handler.cut_after_store
    report.duplicates = {
        "users by email": [f"{r['k']} x{r['n']}" for r in dup_users],
        "tenants by slug": [f"{r['k']} x{r['n']}" for r in dup_tenants],
        "Stripe customers per tenant": [f"{t} x{n}" for t, n in customers.items() if n > 1],
        "PaymentIntents per idempotency key": [f"{k} x{len(v)}" for k, v in intents.items() if len(v) > 1],
        "emails by Message-ID": [
            f"{m} x{n} ({await _explain_duplicate_email(stack, m, messages)})"
            for m, n in message_ids.items()
            if n - 1 > cut[m]
        ],
    }
    report.resent_after_cut = [f"{m} x{n}" for m, n in message_ids.items() if 1 < n <= cut[m] + 1]
    report.orphans = {
        "pending users without a waiting registration": [
            u["email"] for u in users.values() if u["status"] == "pending" and f"registration-{u['id']}" not in running
        ],
        "Stripe customers of failed or missing tenants": [
            f"{t}" for t in customers if tenants.get(t or "") != "active"
        ],
    }

    missing = report.unaccounted
    for address, (user_id, verify) in accepted.registrations.items():
        row = users.get(address.lower())
        wanted = "active" if verify else "pending"
        if row is None or row["id"] != user_id or row["status"] != wanted:
            missing.append(f"registration {address}: {dict(row) if row else 'no user'}, expected {wanted}")
    for tenant_id in accepted.tenants:
        if tenants.get(tenant_id) != "active":
            missing.append(f"tenant {tenant_id}: {tenants.get(tenant_id)}")
    for sub_id in accepted.subscriptions:  # each was seen active (paid) or past_due (declined), then cancelled
        if subs.get(sub_id) != "canceled":
            missing.append(f"subscription {sub_id}: {subs.get(sub_id)}, expected canceled")
    for inv_id in accepted.invitations:
        if invites.get(inv_id) != "pending":
            missing.append(f"invitation {inv_id}: {invites.get(inv_id)}")

    answers = load.client.seen.answers
    report.answers = Counter(status for _, status, _, _ in answers)
    report.resets = len(load.client.seen.resets)
    report.server_errors = [
        f"{what} {status} {kind}"
        for what, status, after, kind in answers
        if status >= 500 and (status != 503 or not after)
    ]


# --- the run ---------------------------------------------------------------------------------------------------


async def run_chaos(plan: ChaosPlan, *, progress: Callable[[str], None] | None = None) -> ChaosReport:
    """Start the stack in a temporary directory, run the plan, check, stop; the report says what was found."""
    began = time.monotonic()

    def say(line: str) -> None:
        if progress is not None:
            progress(f"{time.monotonic() - began:6.1f} s  {line}")

    rng = random.Random(plan.seed)
    report = ChaosReport(plan)
    log: collections.deque[str] = collections.deque(maxlen=400)  # shown if the stack does not come up
    backs: Counter[str] = Counter()

    def sink(name: str, line: str) -> None:
        log.append(f"{name} | {line}")
        if '"level": "ERROR"' in line:
            report.app_errors.append(f"{name} | {line}")
        if name == "devstack":
            say(line)
            if line.endswith(" is back"):
                backs[line.removesuffix(" is back")] += 1

    tmp = _temp_dir()
    stack = EmbeddedStack(
        stack_settings(tmp / "data"),
        app=True,
        workers=WORKERS,
        api_replicas=API_REPLICAS,
        log=sink,
        extra_env=FAST_EMAIL,
    )
    try:
        await stack.start()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        say("the stack did not start; its last log lines:\n" + "\n".join(log))
        raise
    say("stack up:\n" + stack.table())
    supervisor = asyncio.create_task(stack.supervise(POLICY))
    try:
        limits = httpx.Limits(max_keepalive_connections=0)  # a connection per request: the front spreads them
        async with httpx.AsyncClient(base_url=stack.api_url or "", timeout=30, limits=limits) as http:
            load = Load(stack, http, plan, rng)
            await asyncio.gather(*(load.add_owner() for _ in range(OWNERS)))
            say(f"{OWNERS} owners with a tenant each")
            if plan.calm_sagas:
                for worker in stack.workers[1:]:
                    await worker.stop()
                phase = Phase("calm", 1)
                await load.phase(phase, plan.calm_sagas)
                report.phases.append(phase)
                say(f"calm phase, 1 worker: {phase.sagas} sagas in {phase.seconds:.1f} s")
                for worker in stack.workers[1:]:
                    await worker.start()
                phase = Phase("calm", WORKERS)
                await load.phase(phase, plan.calm_sagas)
                report.phases.append(phase)
                say(f"calm phase, {WORKERS} workers: {phase.sagas} sagas in {phase.seconds:.1f} s")
            phase = Phase("faults", WORKERS)
            done = asyncio.Event()
            faults = asyncio.create_task(Faults(stack, backs, rng).run(plan, load, plan.sagas, done, report))
            try:
                await load.phase(phase, plan.sagas)
            finally:
                done.set()
            await faults
            report.phases.append(phase)
            say(f"faulted phase: {phase.sagas} sagas in {phase.seconds:.1f} s; faults: {'; '.join(report.faults)}")
            workflows = await settle(stack, plan.settle_timeout)
            say("settled; checking")
            await check(stack, load, report, workflows)
            report.accepted, report.latency = load.accepted, dict(load.latency)
        if stack.front is not None:
            names = {api.listen: api.name for api in stack.apis}
            report.per_replica = {names.get(u, str(u)): n for u, n in stack.front.front.connections.items()}
        if supervisor.done():
            report.accepted.failures.append(f"supervision ended: {supervisor.result()}")
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await stack.stop()
        say("stack stopped")
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _temp_dir() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="prognet-chaos-"))
    tmp.chmod(0o755)  # PostgreSQL's own system user must get in
    return tmp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prognet chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the short form (~40 sagas, one fault of each kind)")
    parser.add_argument("--sagas", type=int, help="sagas in the faulted phase (default: 300, short: 40)")
    parser.add_argument("--calm-sagas", type=int, help="sagas in each calm phase, 1 then 3 workers (default 60)")
    parser.add_argument("--worker-kills", type=int, help="workers SIGKILLed during the faulted phase (default 4)")
    parser.add_argument("--seed", type=int, help="random seed of the fault schedule")
    args = parser.parse_args(argv)
    base = SHORT if args.short else FULL
    plan = ChaosPlan(
        sagas=args.sagas or base.sagas,
        calm_sagas=base.calm_sagas if args.calm_sagas is None else args.calm_sagas,
        worker_kills=base.worker_kills if args.worker_kills is None else args.worker_kills,
        concurrency=base.concurrency,
        faults_within=base.faults_within,
        seed=args.seed,
    )

    def say(line: str) -> None:
        print(f"[chaos] {line}", flush=True)

    report = asyncio.run(run_chaos(plan, progress=say))
    print(report.text(), flush=True)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

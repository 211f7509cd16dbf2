"""The alert evaluator's activities: read every signal, keep its per-minute series, open or clear incidents.

Signals come from our own data: PostgreSQL (email tracking, domain events, as the platform), Temporal visibility
(sagas and webhook deliveries parked in `awaiting_operator`) and Redis (the relay's lag). Each series is a Redis
sorted set `alerts:series:{signal}` (score = minute since the epoch, member = "minute:value"), kept for a day.
A source that does not answer leaves its signals out of this minute (their rules neither fire nor clear).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)

from models import activity_names as names
from models.alerting import AlertingConfig, Verdict
from models.db import transaction
from models.incidents import (
    CollectedSignals,
    Firing,
    IncidentView,
    SignalPoint,
    fire_incident,
    incident_workflow_id,
    signal_if_running,
)
from models.names import (
    ALERT_EVALUATOR_SCHEDULE,
    ALERT_EVALUATOR_WORKFLOW,
    EMAIL_DELIVERY_WORKFLOW,
    SIGNAL_INCIDENT_CLEAR,
    TASK_QUEUE,
    WEBHOOK_DELIVERY_WORKFLOW,
)

log = logging.getLogger(__name__)

SERIES_KEY = "alerts:series:{}"
KEEP_MINUTES = 24 * 60
RELAY_STATS_KEY = "relay:stats"  # relay/relay.py
EVENT_SIGNALS = {  # per-minute counts of these event types
    "auth.login_failures": "user.login_failed",
    "auth.login_locks": "user.login_locked",
    "billing.payment_declines": "invoice.payment_failed",
}
PARKED = "ExecutionStatus = 'Running' AND SagaStatus = 'awaiting_operator'"
VISIBILITY_SIGNALS = {
    "saga.awaiting_operator": (
        f"{PARKED} AND WorkflowType NOT IN ('{EMAIL_DELIVERY_WORKFLOW}', '{WEBHOOK_DELIVERY_WORKFLOW}')"
    ),
    # webhook_deliveries rows are visible to their tenant only (RLS): the parked workflows are counted instead
    "webhook.dead_letters": f"{PARKED} AND WorkflowType = '{WEBHOOK_DELIVERY_WORKFLOW}'",
}
DB_SIGNALS = {
    "email.dead_letters": "SELECT count(*) FROM email_messages WHERE state = 'dead_lettered'",
    "email.deferrals": "SELECT count(*) FROM email_messages WHERE state = 'deferred'",
    # a breaker's state is its last circuit.* event (platform events, one aggregate per breaker)
    "circuit.open_breakers": (
        "SELECT count(*) FROM (SELECT DISTINCT ON (aggregate_id) type FROM domain_events "
        "WHERE type IN ('circuit.opened', 'circuit.closed') ORDER BY aggregate_id, id DESC) last "
        "WHERE type = 'circuit.opened'"
    ),
}


def current_minute(now: datetime | None = None) -> int:
    return int((now or datetime.now(UTC)).timestamp() // 60)


class AlertingActivities:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        client: Client,
        config: AlertingConfig,
        escalation_seconds: float | None = None,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.client = client
        self.config = config
        self.escalation_seconds = escalation_seconds

    # --- signals ---

    async def _from_database(self, since: datetime) -> dict[str, float]:
        values: dict[str, float] = {}
        async with transaction(self.engine, platform=True) as db:
            for signal, sql in DB_SIGNALS.items():
                values[signal] = float((await db.exec(text(sql))).scalar_one())  # type: ignore[call-overload]
            counts = dict(
                (
                    await db.exec(  # type: ignore[call-overload]
                        text(
                            "SELECT type, count(*) FROM domain_events WHERE type = ANY(:types) AND occurred_at >= "
                            ":since GROUP BY type"
                        ),
                        params={"types": list(EVENT_SIGNALS.values()), "since": since},
                    )
                ).all()
            )
        values.update({signal: float(counts.get(event, 0)) for signal, event in EVENT_SIGNALS.items()})
        return values

    async def _from_temporal(self) -> dict[str, float]:
        return {s: float((await self.client.count_workflows(q)).count) for s, q in VISIBILITY_SIGNALS.items()}

    async def _from_redis(self) -> dict[str, float]:
        lag = await self.redis.hget(RELAY_STATS_KEY, "last_lag_ms")
        return {"relay.lag_ms": float(lag or 0)}

    async def read_signals(self, now: datetime) -> tuple[dict[str, float], list[str]]:
        """This minute's value of every signal; the names of those whose source failed."""
        sources = [
            (self._from_database(now - timedelta(minutes=1)), [*DB_SIGNALS, *EVENT_SIGNALS]),
            (self._from_temporal(), list(VISIBILITY_SIGNALS)),
            (self._from_redis(), ["relay.lag_ms"]),
        ]
        values: dict[str, float] = {}
        missing: list[str] = []
        for read, signals in sources:
            try:
                values.update(await read)
            except Exception as exc:  # one source down must not silence the others' rules
                log.warning("alert signals %s not read: %s", ", ".join(signals), exc)
                missing.extend(signals)
        return values, missing

    @activity.defn(name=names.COLLECT_ALERT_SIGNALS)
    async def collect_signals(self) -> CollectedSignals:
        now = datetime.now(UTC)
        minute = current_minute(now)
        values, missing = await self.read_signals(now)
        async with self.redis.pipeline(transaction=True) as pipe:
            for signal, value in values.items():
                key = SERIES_KEY.format(signal)
                pipe.zremrangebyscore(key, minute, minute)  # a second run in the same minute replaces its point
                pipe.zadd(key, {f"{minute}:{value:g}": minute})
                pipe.zremrangebyscore(key, "-inf", minute - KEEP_MINUTES)
            await pipe.execute()
        history: dict[str, int] = {}
        for rule in self.config.rules:
            history[rule.signal] = max(history.get(rule.signal, 0), rule.history_minutes)
        series: dict[str, list[SignalPoint]] = {}
        for signal, minutes in history.items():
            members = await self.redis.zrangebyscore(SERIES_KEY.format(signal), minute - minutes, minute)
            points = [str(m.decode() if isinstance(m, bytes) else m).split(":") for m in members]
            series[signal] = [SignalPoint(minute=int(m), value=float(v)) for m, v in points]
        return CollectedSignals(minute=minute, rules=self.config.rules, series=series, missing=missing)

    # --- incidents ---

    @activity.defn(name=names.APPLY_ALERT_VERDICTS)
    async def apply_verdicts(self, verdicts: list[Verdict]) -> None:
        """Firing: open or join the rule's incident (signal-with-start). Quiet: tell a running one."""
        rules = {r.name: r for r in self.config.rules}
        task_queue = activity.info().task_queue  # incidents run where the evaluator runs
        for verdict in verdicts:
            rule = rules.get(verdict.rule)
            if rule is None:
                continue  # the rule left the config since this run collected
            if verdict.firing:
                await fire_incident(
                    self.client,
                    self.config,
                    rule.name,
                    Firing(value=verdict.value, detail=verdict.detail),
                    task_queue=task_queue,
                    escalation_seconds=self.escalation_seconds,
                )
            else:
                await signal_if_running(self.client, incident_workflow_id(rule.name, "global"), SIGNAL_INCIDENT_CLEAR)

    @activity.defn(name=names.POST_INCIDENT_WEBHOOK)
    async def post_webhook(self, url: str, incident: IncidentView) -> None:
        """The incident as JSON to a chat or paging URL of the routing table (trusted config, not a tenant's)."""
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            response = await http.post(
                url, content=incident.model_dump_json(), headers={"content-type": "application/json"}
            )
        if response.status_code >= 300:
            raise RuntimeError(f"{url} answered {response.status_code}")


def evaluator_schedule() -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ALERT_EVALUATOR_WORKFLOW,
            id="alert-evaluation",
            task_queue=TASK_QUEUE,
            execution_timeout=timedelta(minutes=1),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1))]),
        # a missed minute is not caught up (the next run reads the present); runs never overlap
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(minutes=1)),
        state=ScheduleState(note="evaluates the alert rules of config/alerting.toml every minute; pause to silence"),
    )


async def ensure_alert_schedule(client: Client) -> bool:
    """Create the evaluator's Schedule if it does not exist (every worker start); one that exists (perhaps
    paused by an operator) is left as it is. True if created."""
    try:
        await client.create_schedule(ALERT_EVALUATOR_SCHEDULE, evaluator_schedule())
    except ScheduleAlreadyRunningError:
        return False
    log.info("alert evaluator schedule %s created", ALERT_EVALUATOR_SCHEDULE)
    return True

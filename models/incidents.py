"""Incidents: what the evaluator, the incident workflow, its activities and the API exchange.

The routing a new incident follows is resolved from the config when it opens and travels in its input, so the
workflow's escalation never depends on a file that may change while it runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from models.alerting import AlertingConfig, Rule, Severity, Verdict
from models.names import (
    INCIDENT_ID_PREFIX,
    INCIDENT_WORKFLOW,
    SA_INCIDENT_SEVERITY,
    SA_INCIDENT_STATE,
    SIGNAL_INCIDENT_FIRE,
    TASK_QUEUE,
)

IncidentStateValue = Literal["open", "acknowledged", "resolved"]
TimelineKind = Literal[
    "fired", "notified", "notify_failed", "escalated", "repeated", "acknowledged", "resolved", "reopened"
]


def incident_workflow_id(rule: str, dedupe_key: str) -> str:
    """`incident-{rule}-{dedupe key}`: the key is `global` or a tenant id, never anything personal."""
    return f"{INCIDENT_ID_PREFIX}{rule}-{dedupe_key}"


class IncidentLevel(BaseModel):
    emails: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)
    timeout_seconds: float


class IncidentInput(BaseModel):
    rule: str
    severity: Severity
    dedupe_key: str = "global"
    summary: str
    levels: list[IncidentLevel]
    repeat_every_seconds: float
    clear_after_seconds: float
    reopen_window_seconds: float
    carried: IncidentView | None = None  # continue-as-new: the incident so far


class Firing(BaseModel):
    """One evaluation (or Alertmanager notification) that found the condition true."""

    value: float | None = None
    detail: str = ""
    source: str = "evaluator"


class Acknowledge(BaseModel):
    by: str = Field(description="who: `user:{id}` from the API, free text from the Temporal UI")
    note: str | None = None


class Resolve(BaseModel):
    by: str
    note: str | None = None


class TimelineEntry(BaseModel):
    at: datetime
    kind: TimelineKind
    detail: str = ""
    level: int | None = None  # 1-based escalation level, for notifications
    to: list[str] = Field(default_factory=list)
    by: str | None = None


class IncidentView(BaseModel):
    id: str
    rule: str
    severity: Severity
    dedupe_key: str
    summary: str
    state: IncidentStateValue
    opened_at: datetime
    level: int = 1  # the level notified last (1-based)
    next_notification_at: datetime | None = None  # while open: the next level (or the last one again) is due
    firings: int = 0
    last_value: float | None = None
    last_detail: str = ""
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    clear_since: datetime | None = None
    notifications: int = 0
    timeline: list[TimelineEntry] = Field(default_factory=list)


IncidentInput.model_rebuild()


class SignalPoint(BaseModel):
    minute: int  # minutes since the epoch (UTC)
    value: float


class CollectedSignals(BaseModel):
    """One evaluator run's input: the rules, and each rule's signal series up to this minute."""

    minute: int
    rules: list[Rule]
    series: dict[str, list[SignalPoint]]
    missing: list[str] = Field(default_factory=list)  # signals whose source did not answer this minute


class EvaluationReport(BaseModel):
    minute: int
    verdicts: list[Verdict]


def incident_input(
    config: AlertingConfig, rule: Rule, dedupe_key: str = "global", escalation_seconds: float | None = None
) -> IncidentInput:
    """A new incident of `rule`, routed by its severity (and tenant); `escalation_seconds` (the dev stack)
    replaces every level's timeout and the repeat interval, so an escalation can be watched in a minute."""
    route = config.route(rule.severity, dedupe_key)

    def seconds(value: timedelta) -> float:
        return escalation_seconds if escalation_seconds is not None else value.total_seconds()

    return IncidentInput(
        rule=rule.name,
        severity=rule.severity,
        dedupe_key=dedupe_key,
        summary=rule.summary or rule.name,
        levels=[
            IncidentLevel(emails=lv.emails, webhooks=lv.webhooks, timeout_seconds=seconds(lv.timeout))
            for lv in route.levels
        ],
        repeat_every_seconds=seconds(route.repeat_every),
        clear_after_seconds=config.incidents.clear_after.total_seconds(),
        reopen_window_seconds=config.incidents.reopen_window.total_seconds(),
    )


# --- opening and clearing (the evaluator's activity and the Alertmanager receiver) ---


async def fire_incident(
    client: Client,
    config: AlertingConfig,
    rule_name: str,
    firing: Firing,
    *,
    dedupe_key: str = "global",
    task_queue: str = TASK_QUEUE,
    escalation_seconds: float | None = None,
) -> str:
    """Open the rule's incident, or join the one open (signal-with-start of `fire`): its workflow id."""
    rule = next(r for r in config.rules if r.name == rule_name)
    workflow_id = incident_workflow_id(rule.name, dedupe_key)
    await client.start_workflow(
        INCIDENT_WORKFLOW,
        incident_input(config, rule, dedupe_key, escalation_seconds),
        id=workflow_id,
        task_queue=task_queue,
        start_signal=SIGNAL_INCIDENT_FIRE,
        start_signal_args=[firing],
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(SA_INCIDENT_SEVERITY, rule.severity), SearchAttributePair(SA_INCIDENT_STATE, "open")]
        ),
        static_summary=f"Incident {rule.name} ({rule.severity})",
    )
    return workflow_id


async def signal_if_running(client: Client, workflow_id: str, signal: str, arg: object = None) -> bool:
    try:
        handle = client.get_workflow_handle(workflow_id)
        await (handle.signal(signal) if arg is None else handle.signal(signal, arg))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True

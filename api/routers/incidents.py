"""Incidents (platform operators): list with timeline, acknowledge, resolve; Alertmanager's webhook receiver.

An incident is the workflow `incident-{rule}-{dedupe key}` (workflows/incident.py): its query `incident` is the
view with timeline, and acknowledge / resolve are its signals — exactly what an operator can send from the
Temporal UI. Visibility (`IncidentState`, `IncidentSeverity`) finds them. Like the other admin routes, a caller
who is not a platform admin gets the 404 an unknown path gets.

Alertmanager (Prometheus' infrastructure alerts) posts to `/v1/admin/incidents/alertmanager` with the bearer
token ALERTMANAGER_TOKEN: a firing alert opens or joins the incident of the rule named by its `alertname`
label (`alertmanager` rules of config/alerting.toml carry the severity and routing), a resolved one clears it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import PlatformAdmin, TemporalConnectorDep
from api.problems import BEARER_CHALLENGE, INCIDENT_RESOLVED, NOT_FOUND, UNAUTHENTICATED, Problem, problem_responses
from models.alerting import AlertConfigError, load_alerting_config
from models.incidents import (
    Acknowledge,
    Firing,
    IncidentView,
    Resolve,
    fire_incident,
    incident_workflow_id,
    signal_if_running,
)
from models.names import (
    INCIDENT_WORKFLOW,
    QUERY_INCIDENT,
    SIGNAL_INCIDENT_ACK,
    SIGNAL_INCIDENT_CLEAR,
    SIGNAL_INCIDENT_RESOLVE,
    TASK_QUEUE,
)
from prognet.settings import Settings

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/admin/incidents", tags=["admin"], dependencies=[Depends(require_json_body)])

ADMIN_ERRORS = (401, 404)
QUERY_TIMEOUT = timedelta(seconds=5)
LIST_LIMIT = 50
INCIDENT_NOT_FOUND = "No incident with this id."

IncidentIdPath = Annotated[str, Path(pattern=r"^incident-[a-z0-9-]{1,150}$", description="The incident's workflow id.")]


class IncidentPage(BaseModel):
    items: list[IncidentView]


class IncidentActionRequest(BaseModel):
    note: str | None = Field(None, max_length=500)


class IncidentAction(BaseModel):
    id: str
    action: Literal["acknowledge", "resolve"]
    state: str = Field(description="the incident's state when the signal was sent; it acts on it at once")
    links: dict[str, str]


async def _view(client: Client, incident_id: str) -> IncidentView:
    try:
        view = await client.get_workflow_handle(incident_id).query(
            QUERY_INCIDENT, result_type=IncidentView, rpc_timeout=QUERY_TIMEOUT
        )
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise Problem(NOT_FOUND, INCIDENT_NOT_FOUND) from None
        raise
    except WorkflowQueryFailedError:
        raise Problem(NOT_FOUND, INCIDENT_NOT_FOUND) from None  # not an incident (or not opened yet)
    return view


@router.get(
    "",
    response_model=IncidentPage,
    summary="Incidents with their timeline (platform operators)",
    description="Newest first, at most 50. `state=open` (not acknowledged), `acknowledged`, or `resolved` "
    "(still within its reopen window, or closed); `severity` filters too.",
    responses=problem_responses(*ADMIN_ERRORS, 422),
)
async def list_incidents(
    operator: PlatformAdmin,
    temporal: TemporalConnectorDep,
    state: Annotated[Literal["open", "acknowledged", "resolved"] | None, Query()] = None,
    severity: Annotated[Literal["critical", "warning", "info"] | None, Query()] = None,
) -> IncidentPage:
    client = await temporal.get()
    clauses = [f"WorkflowType = '{INCIDENT_WORKFLOW}'"]
    if state is not None:
        clauses.append(f"IncidentState = '{state}'")
        if state != "resolved":
            clauses.append("ExecutionStatus = 'Running'")
    if severity is not None:
        clauses.append(f"IncidentSeverity = '{severity}'")
    ids = [execution.id async for execution in client.list_workflows(" AND ".join(clauses), limit=LIST_LIMIT)]
    views = await asyncio.gather(*(_view(client, i) for i in ids), return_exceptions=True)
    for view in views:
        if isinstance(view, BaseException) and not isinstance(view, Problem):
            raise view  # Temporal down: 503; a Problem (404) is one that ended between the listing and the query
    return IncidentPage(items=[v for v in views if isinstance(v, IncidentView)])


@router.get(
    "/{incident_id}",
    response_model=IncidentView,
    summary="One incident with its timeline (platform operators)",
    responses=problem_responses(*ADMIN_ERRORS, 422),
)
async def get_incident(
    incident_id: IncidentIdPath, operator: PlatformAdmin, temporal: TemporalConnectorDep
) -> IncidentView:
    return await _view(await temporal.get(), incident_id)


async def _act(
    temporal: TemporalConnectorDep, incident_id: str, action: Literal["acknowledge", "resolve"], signal: str, arg
) -> IncidentAction:
    client = await temporal.get()
    view = await _view(client, incident_id)
    if view.state == "resolved":
        raise Problem(INCIDENT_RESOLVED, f"The incident was resolved at {view.resolved_at}.")
    await client.get_workflow_handle(incident_id).signal(signal, arg)
    log.info("incident %s requested", action, extra={"workflow_id": incident_id, "by": arg.by})
    return IncidentAction(
        id=incident_id, action=action, state=view.state, links={"self": f"/v1/admin/incidents/{incident_id}"}
    )


@router.post(
    "/{incident_id}/ack",
    response_model=IncidentAction,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Acknowledge an incident: its escalation stops (platform operators)",
    responses=problem_responses(400, *ADMIN_ERRORS, 409, 422),
)
async def acknowledge_incident(
    incident_id: IncidentIdPath,
    operator: PlatformAdmin,
    temporal: TemporalConnectorDep,
    body: IncidentActionRequest | None = None,
) -> IncidentAction:
    note = body.note if body else None
    ack = Acknowledge(by=f"user:{operator.user_id}", note=note)
    return await _act(temporal, incident_id, "acknowledge", SIGNAL_INCIDENT_ACK, ack)


@router.post(
    "/{incident_id}/resolve",
    response_model=IncidentAction,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Resolve an incident (platform operators); firing again within the reopen window reopens it",
    responses=problem_responses(400, *ADMIN_ERRORS, 409, 422),
)
async def resolve_incident(
    incident_id: IncidentIdPath,
    operator: PlatformAdmin,
    temporal: TemporalConnectorDep,
    body: IncidentActionRequest | None = None,
) -> IncidentAction:
    note = body.note if body else None
    req = Resolve(by=f"user:{operator.user_id}", note=note)
    return await _act(temporal, incident_id, "resolve", SIGNAL_INCIDENT_RESOLVE, req)


# --- Alertmanager -------------------------------------------------------------------------------------------------


class AlertmanagerAlert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload (version 4); only the alerts are read."""

    alerts: list[AlertmanagerAlert] = Field(max_length=500)


class AlertmanagerAccepted(BaseModel):
    incidents: list[str]
    ignored: list[str] = Field(description='alertnames with no rule of `signal = "alertmanager"` in the config')


def _rule_name(alertname: str) -> str:
    return "am-" + re.sub(r"[^a-z0-9]+", "-", alertname.lower()).strip("-")[:60]


def _require_token(request: Request, authorization: str | None) -> None:
    settings: Settings = request.app.state.settings
    expected = settings.alertmanager_token.get_secret_value() if settings.alertmanager_token else ""
    if not expected:
        raise Problem(NOT_FOUND, "No resource at this path.")  # the receiver is off
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(UNAUTHENTICATED, "A valid bearer token is required.", headers=BEARER_CHALLENGE)


@router.post(
    "/alertmanager",
    response_model=AlertmanagerAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Alertmanager's webhook receiver: infrastructure alerts open incidents",
    description="Bearer ALERTMANAGER_TOKEN (unset: 404). Firing alerts open or join the incident of rule "
    "`am-{alertname}` (it must be in config/alerting.toml, signal `alertmanager`); resolved alerts clear it.",
    responses=problem_responses(400, 401, 404, 422),
)
async def alertmanager_webhook(
    payload: AlertmanagerWebhook,
    request: Request,
    temporal: TemporalConnectorDep,
    authorization: Annotated[str | None, Header()] = None,
) -> AlertmanagerAccepted:
    _require_token(request, authorization)
    settings: Settings = request.app.state.settings
    try:
        config = load_alerting_config(settings.alerting_config)
    except AlertConfigError as exc:
        log.error("alerting config: %s", exc)
        raise
    rules = {r.name for r in config.rules}
    # One notification carries a group's alerts (e.g. one per instance): the rule's incident fires if any of them
    # still fires, and is told clear only when none does.
    firing: dict[str, AlertmanagerAlert] = {}
    cleared: list[str] = []
    ignored: list[str] = []
    for alert in payload.alerts:
        name = _rule_name(alert.labels.get("alertname", ""))
        if name not in rules:
            ignored.append(alert.labels.get("alertname", ""))
        elif alert.status == "firing":
            firing.setdefault(name, alert)
        elif name not in cleared:
            cleared.append(name)
    client = await temporal.get()
    opened = []
    for name, alert in firing.items():
        detail = alert.annotations.get("summary") or alert.annotations.get("description") or name
        opened.append(
            await fire_incident(
                client,
                config,
                name,
                Firing(detail=detail[:300], source="alertmanager"),
                task_queue=TASK_QUEUE,
                escalation_seconds=settings.alert_escalation_seconds,
            )
        )
    for name in cleared:
        if name not in firing:
            await signal_if_running(client, incident_workflow_id(name, "global"), SIGNAL_INCIDENT_CLEAR)
    return AlertmanagerAccepted(incidents=opened, ignored=ignored)

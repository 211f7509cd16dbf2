"""Alerting end to end on the stack: a dead letter → an evaluator run → an incident that emails the on-call
address (SMTP sink), escalates to the next level, and is acknowledged and resolved through the API; the
Alertmanager receiver opens and clears an incident.

The evaluator runs on a task queue of the test's own with a config of its own (rule names tagged per test), and
is started directly rather than by its Schedule.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.worker import Worker

from activities.alerting import AlertingActivities, ensure_alert_schedule
from models.alerting import parse_alerting_config
from models.contracts import EmailRequest
from models.db import transaction
from models.incidents import EvaluationReport
from models.names import (
    ALERT_EVALUATOR_SCHEDULE,
    ALERT_EVALUATOR_WORKFLOW,
    EMAIL_DELIVERY_WORKFLOW,
    EMAIL_TASK_QUEUE,
    email_workflow_id,
)
from models.tables import EmailMessage
from prognet_dev import read_messages
from tests.api.conftest import assert_problem, make_platform_admin, person
from workflows.alert_evaluator import AlertEvaluatorWorkflow
from workflows.incident import IncidentWorkflow

# every signal has a rule, so one run shows that each source (PostgreSQL, visibility, Redis) answers
OTHER_RULES = """
[[rules]]
name = "parked-{tag}"
severity = "info"
signal = "saga.awaiting_operator"
threshold = {{ above = 100000, for = "10m" }}

[[rules]]
name = "hooks-{tag}"
severity = "info"
signal = "webhook.dead_letters"
threshold = {{ above = 100000 }}

[[rules]]
name = "logins-{tag}"
severity = "info"
signal = "auth.login_failures"
anomaly = {{ min_volume = 100000 }}

[[rules]]
name = "lag-{tag}"
severity = "info"
signal = "relay.lag_ms"
threshold = {{ above = 100000000 }}

[[rules]]
name = "breakers-{tag}"
severity = "info"
signal = "circuit.open_breakers"
threshold = {{ above = 100000 }}

[[rules]]
name = "deferred-{tag}"
severity = "info"
signal = "email.deferrals"
threshold = {{ above = 100000 }}

[[rules]]
name = "am-diskfull-{tag}"
severity = "warning"
signal = "alertmanager"
summary = "A disk is full"
"""
CONFIG = (
    """
[[rules]]
name = "dl-{tag}"
severity = "warning"
signal = "email.dead_letters"
summary = "An email is in the dead letter"
threshold = {{ above = 0 }}
"""
    + OTHER_RULES
    + """
[[routes]]
severity = "warning"
repeat_every = "1h"
levels = [
    {{ emails = ["oncall-{tag}@example.com"], timeout = "2s" }},
    {{ emails = ["lead-{tag}@example.com"], timeout = "1h" }},
]

[[routes]]
severity = "info"
levels = [{{ emails = ["ops-{tag}@example.com"], timeout = "1h" }}]
"""
)


@pytest.fixture
async def alerting(services, temporal_client: Client, temporal_app) -> AsyncIterator[tuple[str, str, Path]]:
    """(tag, task queue, config file): the evaluator and incidents on a queue of this test's own."""
    tag = uuid.uuid4().hex[:10]
    task_queue = f"alerts-{tag}"
    text = CONFIG.format(tag=tag)
    path = Path(temporal_app.state.settings.data_dir) / f"alerting-{tag}.toml"
    path.write_text(text)
    redis = Redis.from_url(services.redis_url)
    acts = AlertingActivities(temporal_app.state.engine, redis, temporal_client, parse_alerting_config(text))
    worker = Worker(
        temporal_client,
        task_queue=task_queue,
        workflows=[AlertEvaluatorWorkflow, IncidentWorkflow],
        activities=[acts.collect_signals, acts.apply_verdicts, acts.post_webhook],
    )
    async with worker:
        yield tag, task_queue, path
    await redis.aclose()


async def _dead_letter(temporal_client: Client, engine, tag: str) -> None:
    """A platform notice to a `+fail550` address: the sink refuses it, the delivery parks in the dead letter."""
    message_id = uuid.uuid4()
    await temporal_client.start_workflow(
        EMAIL_DELIVERY_WORKFLOW,
        EmailRequest(
            message_id=message_id,
            template="notice",
            to_address=f"nobody+fail550-{tag}@example.com",
            params={"subject": "Hi", "body": "Hello"},
        ),
        id=email_workflow_id(message_id),
        task_queue=EMAIL_TASK_QUEUE,
    )
    for _ in range(200):
        async with transaction(engine, platform=True) as db:
            row = await db.get(EmailMessage, message_id)
        if row is not None and row.state == "dead_lettered":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the message never reached the dead letter")


async def _mail_to(maildir: Path, address: str, timeout: float = 20.0) -> list:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [m for m in read_messages(maildir) if address in str(m.get("To", "")).lower()]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def _until(api, path: str, headers: dict, predicate, timeout: float = 20.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(path, headers=headers)
        if response.status_code == 200 and predicate(response.json()):
            return response.json()
        assert asyncio.get_running_loop().time() < deadline, f"{path}: {response.status_code} {response.text}"
        await asyncio.sleep(0.1)


async def test_a_dead_letter_opens_an_incident_that_notifies_escalates_and_is_acknowledged(
    api, app_engine, temporal_client, services, alerting
):
    tag, task_queue, _ = alerting
    operator = await person(api, app_engine)
    await make_platform_admin(app_engine, operator.id)
    await _dead_letter(temporal_client, app_engine, tag)

    report = await temporal_client.execute_workflow(
        AlertEvaluatorWorkflow.run,
        id=f"alert-evaluation-{tag}",
        task_queue=task_queue,
        result_type=EvaluationReport,
        execution_timeout=timedelta(seconds=30),
    )
    verdicts = {v.rule: v for v in report.verdicts}
    assert set(verdicts) == {f"{n}-{tag}" for n in ("dl", "parked", "hooks", "logins", "lag", "breakers", "deferred")}
    assert verdicts[f"dl-{tag}"].firing and verdicts[f"dl-{tag}"].value >= 1
    assert not any(v.firing for name, v in verdicts.items() if name != f"dl-{tag}")

    incident_id = f"incident-dl-{tag}-global"
    path = f"/v1/admin/incidents/{incident_id}"
    first = await _mail_to(services.maildir, f"oncall-{tag}@example.com")
    assert len(first) == 1 and first[0]["Subject"] == f"[WARNING] dl-{tag}: An email is in the dead letter"
    # not acknowledged within level 1's 2 s: level 2 is notified
    assert len(await _mail_to(services.maildir, f"lead-{tag}@example.com")) == 1
    view = await _until(api, path, operator.headers, lambda v: v["level"] == 2)
    assert view["state"] == "open" and view["severity"] == "warning" and view["rule"] == f"dl-{tag}"
    kinds = [(e["kind"], e["level"], e["to"]) for e in view["timeline"]]
    assert kinds == [
        ("fired", None, []),
        ("notified", 1, [f"oncall-{tag}@example.com"]),
        ("escalated", 2, [f"lead-{tag}@example.com"]),
    ]

    outsider = await person(api, app_engine)
    assert_problem(await api.post(f"{path}/ack", headers=outsider.headers), 404, "not-found")
    assert_problem(await api.get(path, headers=outsider.headers), 404, "not-found")
    accepted = await api.post(f"{path}/ack", json={"note": "on it"}, headers=operator.headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {
        "id": incident_id,
        "action": "acknowledge",
        "state": "open",
        "links": {"self": path},
    }
    acked = await _until(api, path, operator.headers, lambda v: v["state"] == "acknowledged")
    assert acked["acknowledged_by"] == f"user:{operator.id}" and acked["timeline"][-1]["detail"] == "on it"
    listed = await _until(
        api,
        "/v1/admin/incidents?state=acknowledged&severity=warning",
        operator.headers,
        lambda page: incident_id in [i["id"] for i in page["items"]],
    )
    assert all(i["state"] == "acknowledged" for i in listed["items"])

    # the next minute's evaluation joins the incident: no new one, no new notification
    await temporal_client.execute_workflow(
        AlertEvaluatorWorkflow.run,
        id=f"alert-evaluation-{tag}-2",
        task_queue=task_queue,
        result_type=EvaluationReport,
        execution_timeout=timedelta(seconds=30),
    )
    joined = await _until(api, path, operator.headers, lambda v: v["firings"] == 2)
    assert joined["notifications"] == 2 and joined["state"] == "acknowledged"

    resolved = await api.post(f"{path}/resolve", headers=operator.headers)
    assert resolved.status_code == 202, resolved.text
    await _until(api, path, operator.headers, lambda v: v["state"] == "resolved")
    assert_problem(await api.post(f"{path}/ack", headers=operator.headers), 409, "incident-resolved")
    assert_problem(
        await api.get("/v1/admin/incidents/incident-nothing-here", headers=operator.headers), 404, "not-found"
    )
    await temporal_client.get_workflow_handle(incident_id).terminate("test over")


def _alertmanager_notification(alerts: list[dict]) -> dict:
    """What Alertmanager's webhook receiver POSTs (payload version 4, every field), for a group of alerts."""
    now = datetime.now(UTC).isoformat()
    full = [
        {
            "startsAt": now,
            "endsAt": now if a["status"] == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
            "fingerprint": uuid.uuid4().hex[:16],
            "annotations": {},
            **a,
        }
        for a in alerts
    ]
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "prognet-incidents",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": full,
    }


async def test_alertmanager_opens_and_clears_an_incident_with_its_bearer_token(
    api, app_engine, temporal_client, temporal_app, alerting
):
    tag, _, config_path = alerting
    token = "am-token-" + "x" * 24
    temporal_app.state.settings = temporal_app.state.settings.model_copy(
        update={"alertmanager_token": SecretStr(token), "alerting_config": config_path}
    )
    operator = await person(api, app_engine)
    await make_platform_admin(app_engine, operator.id)
    alert = {"labels": {"alertname": f"DiskFull-{tag}", "severity": "warning"}, "annotations": {"summary": "disk"}}
    body = _alertmanager_notification(
        [{**alert, "status": "firing"}, {"status": "firing", "labels": {"alertname": "NoSuchRule"}}]
    )

    assert_problem(await api.post("/v1/admin/incidents/alertmanager", json=body), 401, "unauthenticated")
    wrong = {"Authorization": "Bearer nope"}
    assert_problem(await api.post("/v1/admin/incidents/alertmanager", json=body, headers=wrong), 401, "unauthenticated")
    auth = {"Authorization": f"Bearer {token}"}
    response = await api.post("/v1/admin/incidents/alertmanager", json=body, headers=auth)
    assert response.status_code == 202, response.text
    incident_id = f"incident-am-diskfull-{tag}-global"
    assert response.json() == {"incidents": [incident_id], "ignored": ["NoSuchRule"]}
    view = await _until(api, f"/v1/admin/incidents/{incident_id}", operator.headers, lambda v: v["notifications"] >= 1)
    assert view["timeline"][0]["detail"] == "disk (alertmanager)"

    # a group of two instances, one resolved and one still firing: the incident is not told clear
    other = {**alert, "labels": {**alert["labels"], "instance": "disk-2"}}
    half = _alertmanager_notification([{**alert, "status": "resolved"}, {**other, "status": "firing"}])
    assert (await api.post("/v1/admin/incidents/alertmanager", json=half, headers=auth)).status_code == 202
    joined = await _until(api, f"/v1/admin/incidents/{incident_id}", operator.headers, lambda v: v["firings"] == 2)
    assert joined["clear_since"] is None
    resolved = _alertmanager_notification([{**alert, "status": "resolved"}, {**other, "status": "resolved"}])
    assert (await api.post("/v1/admin/incidents/alertmanager", json=resolved, headers=auth)).status_code == 202
    cleared = await _until(
        api, f"/v1/admin/incidents/{incident_id}", operator.headers, lambda v: v["clear_since"] is not None
    )
    assert cleared["state"] == "open"  # resolves by itself once clear for `clear_after`
    await temporal_client.get_workflow_handle(incident_id).terminate("test over")


async def test_the_evaluator_schedule_is_created_once_and_left_alone_after(temporal_client):
    handle = temporal_client.get_schedule_handle(ALERT_EVALUATOR_SCHEDULE)
    try:
        assert await ensure_alert_schedule(temporal_client) is True
        await handle.pause(note="an operator silenced alerting")
        assert await ensure_alert_schedule(temporal_client) is False  # a worker start keeps the pause
        desc = await handle.describe()
        assert desc.schedule.state.paused and desc.schedule.state.note == "an operator silenced alerting"
        assert [i.every for i in desc.schedule.spec.intervals] == [timedelta(minutes=1)]
        assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)
        assert desc.schedule.action.workflow == ALERT_EVALUATOR_WORKFLOW
    finally:
        await handle.delete()

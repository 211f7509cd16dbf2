"""The incident workflow under the time-skipping server: escalation level by level at the configured times,
acknowledgement, auto-resolve, the reopen window, repeated firings joining one incident, and a worker restart
mid-escalation.

Each test has a server of its own (the notifications are abandoned children, see tests/conftest.py). The worker
that is stopped mid-escalation keeps no workflow cache: the time-skipping server would send the next task to its
sticky queue and, its clock held by that task, never fall back to the shared queue (a real server does after
5 s), so no time would pass for anyone again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models import activity_names as act
from models.incidents import Acknowledge, Firing, IncidentInput, IncidentLevel, IncidentView, Resolve
from models.names import (
    QUERY_INCIDENT,
    SA_INCIDENT_SEVERITY,
    SA_INCIDENT_STATE,
    SIGNAL_INCIDENT_ACK,
    SIGNAL_INCIDENT_CLEAR,
    SIGNAL_INCIDENT_FIRE,
    SIGNAL_INCIDENT_RESOLVE,
)
from tests.conftest import start_time_skipping
from tests.support.workflows import email_worker
from workers.main import Workers
from workflows.incident import IncidentWorkflow

HOOK = "https://chat.example/hooks/oncall"
INPUT = IncidentInput(
    rule="email-dead-letter",
    severity="warning",
    summary="An email is in the dead letter",
    levels=[
        IncidentLevel(emails=["first@example.com"], webhooks=[HOOK], timeout_seconds=60),
        IncidentLevel(emails=["second@example.com"], timeout_seconds=120),
        IncidentLevel(emails=["lead@example.com", "cto@example.com"], timeout_seconds=300),
    ],
    repeat_every_seconds=600,
    clear_after_seconds=600,
    reopen_window_seconds=1800,
)


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping()
    yield env
    await env.shutdown()


class Hooks:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    @activity.defn(name=act.POST_INCIDENT_WEBHOOK)
    async def post(self, url: str, incident: IncidentView) -> None:
        self.posted.append((url, incident.state))


def _workers(client: Client, task_queue: str, hooks: Hooks, **options) -> Workers:
    return Workers(
        [
            Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=[hooks.post], **options),
            email_worker(client),
        ]
    )


async def _fire(client: Client, task_queue: str, workflow_id: str, detail: str = "1 above 0") -> WorkflowHandle:
    """What the evaluator does each minute the rule holds: signal-with-start."""
    return await client.start_workflow(
        IncidentWorkflow.run,
        INPUT,
        id=workflow_id,
        task_queue=task_queue,
        start_signal=SIGNAL_INCIDENT_FIRE,
        start_signal_args=[Firing(value=1, detail=detail)],
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(SA_INCIDENT_SEVERITY, "warning"), SearchAttributePair(SA_INCIDENT_STATE, "open")]
        ),
    )


async def _view(handle: WorkflowHandle) -> IncidentView:
    return await handle.query(QUERY_INCIDENT, result_type=IncidentView)


def _notifications(view: IncidentView) -> list[tuple[str, int | None, list[str], int]]:
    """(kind, level, to, seconds after opening) of each notification."""
    return [
        (e.kind, e.level, e.to, round((e.at - view.opened_at).total_seconds()))
        for e in view.timeline
        if e.kind in ("notified", "escalated", "repeated")
    ]


def _incident_id() -> str:
    return f"incident-email-dead-letter-{uuid.uuid4().hex[:8]}"


async def test_unacknowledged_it_escalates_through_every_level_on_time_then_repeats_the_last(env, task_queue):
    hooks = Hooks()
    async with _workers(env.client, task_queue, hooks):
        handle = await _fire(env.client, task_queue, _incident_id())
        await env.sleep(90)  # level 1 timed out at 60 s: level 2 notified
        assert [n[:2] for n in _notifications(await _view(handle))] == [("notified", 1), ("escalated", 2)]
        await env.sleep(3600 - 90)
        view = await _view(handle)
    lead = ["lead@example.com", "cto@example.com"]
    assert _notifications(view) == [
        ("notified", 1, ["first@example.com", HOOK], 0),
        ("escalated", 2, ["second@example.com"], 60),
        ("escalated", 3, lead, 180),
        *[("repeated", 3, lead, 480 + 600 * i) for i in range(6)],  # the last level again every 10 min
    ]
    assert view.state == "open" and view.level == 3 and view.notifications == 9
    assert hooks.posted == [(HOOK, "open")]
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SA_INCIDENT_STATE) == "open"


async def test_acknowledging_stops_the_escalation_and_repeated_firings_join_the_open_incident(env, task_queue):
    hooks = Hooks()
    incident_id = _incident_id()
    async with _workers(env.client, task_queue, hooks):
        handle = await _fire(env.client, task_queue, incident_id)
        for _ in range(3):  # the next minutes' evaluations: the same incident, no new notification
            again = await _fire(env.client, task_queue, incident_id, detail="2 above 0")
            assert again.result_run_id == handle.result_run_id
        await env.sleep(70)  # level 2 notified at 60 s
        await handle.signal(SIGNAL_INCIDENT_ACK, Acknowledge(by="user:42", note="looking"))
        await env.sleep(7200)
        view = await _view(handle)
        desc = await handle.describe()
    assert view.firings == 4 and view.last_detail == "2 above 0"
    assert [n[:2] for n in _notifications(view)] == [("notified", 1), ("escalated", 2)]
    assert view.state == "acknowledged" and view.acknowledged_by == "user:42"
    ack = next(e for e in view.timeline if e.kind == "acknowledged")
    assert ack.by == "user:42" and ack.detail == "looking" and round((ack.at - view.opened_at).total_seconds()) == 70
    assert desc.typed_search_attributes.get(SA_INCIDENT_STATE) == "acknowledged"


async def test_clear_for_long_enough_resolves_and_firing_again_within_the_window_reopens(env, task_queue):
    hooks = Hooks()
    incident_id = _incident_id()
    async with _workers(env.client, task_queue, hooks):
        handle = await _fire(env.client, task_queue, incident_id)
        await handle.signal(SIGNAL_INCIDENT_CLEAR)
        await env.sleep(300)
        await _fire(env.client, task_queue, incident_id)  # it held again before the 10 min: clear starts over
        await handle.signal(SIGNAL_INCIDENT_CLEAR)
        await env.sleep(590)
        assert (await _view(handle)).state != "resolved"
        await env.sleep(20)
        resolved = await _view(handle)
        assert resolved.state == "resolved"
        assert (await handle.describe()).typed_search_attributes.get(SA_INCIDENT_STATE) == "resolved"

        await env.sleep(600)  # within the 30 min reopen window: the same incident reopens, level 1 again
        reopened = await _fire(env.client, task_queue, incident_id, detail="3 above 0")
        assert reopened.result_run_id == handle.result_run_id
        await env.sleep(1)
        view = await _view(handle)
        assert view.state == "open" and view.firings == 3 and view.resolved_at is None
        assert [e.kind for e in view.timeline if e.kind in ("resolved", "reopened")] == ["resolved", "reopened"]
        assert _notifications(view)[-1][:2] == ("notified", 1)

        await handle.signal(SIGNAL_INCIDENT_RESOLVE, Resolve(by="user:7"))
        final = await handle.result()  # the reopen window passes quietly: the workflow ends
        assert final.state == "resolved" and final.timeline[-1].by == "user:7"
        fresh = await _fire(env.client, task_queue, incident_id)  # after the window: a new incident
        assert fresh.result_run_id != handle.result_run_id
    resolved_entry = next(e for e in resolved.timeline if e.kind == "resolved")
    assert resolved_entry.by == "evaluator" and resolved_entry.detail == "condition clear for 600 s"


async def test_a_worker_restart_mid_escalation_keeps_the_schedule(env, task_queue):
    """The first worker stops between level 1 and level 2; a new one (another process, as far as the server can
    tell) takes over, and levels 2 and 3 are notified at 60 s and 180 s as if nothing had happened: the timers
    are the server's, and the new worker rebuilds the incident from its history."""
    hooks = Hooks()
    incident_id = _incident_id()
    async with _workers(env.client, task_queue, hooks, max_cached_workflows=0):
        handle = await _fire(env.client, task_queue, incident_id)
        await env.sleep(30)
        assert [n[:2] for n in _notifications(await _view(handle))] == [("notified", 1)]
    # the first worker is gone with level 2 half-way to its time
    async with _workers(env.client, task_queue, hooks):
        await env.sleep(200)
        view = await _view(handle)
    assert [n[:3] for n in _notifications(view)] == [
        ("notified", 1, ["first@example.com", HOOK]),
        ("escalated", 2, ["second@example.com"]),
        ("escalated", 3, ["lead@example.com", "cto@example.com"]),
    ]
    # never early, and late only by the moments the test server lets pass while a task waits for the new worker
    # (a restart that restarted the timers would put level 2 at 90 s)
    at = [(e.at - view.opened_at).total_seconds() for e in view.timeline if e.kind in ("notified", "escalated")]
    assert all(0 <= s - due < 2 for s, due in zip(at, (0, 60, 180), strict=True)), at
    assert view.state == "open" and view.level == 3

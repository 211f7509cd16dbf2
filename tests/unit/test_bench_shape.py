"""The bench's same-shape baseline: a journey's shape counted from history events, the bare workflow's plan
derived from it, and the `prognet bench --json` layout. No timing here: the bench is a command, not a test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from prognet_dev.bench import bench_shaped_workflows, write_json
from prognet_dev.bench.noop_workflow import NOOP_TASK_QUEUE, ShapedWorkflow, noop, start_shaped
from prognet_dev.bench.shape import LOCAL_ACTIVITY_MARKER, bare_workflow_tasks, count, saga_section

HISTORIES = Path(__file__).parents[1] / "replay" / "histories"
SAGA_KEYS = {
    "rate",
    "naive_baseline_rate",
    "naive_ratio",
    "same_shape_baseline_rate",
    "same_shape_ratio",
    "events_per_journey",
}


def event(kind: EventType.ValueType, **attributes) -> HistoryEvent:
    return HistoryEvent(event_type=kind, **attributes)


def registration_like() -> list[HistoryEvent]:
    """Start, a task that runs a local activity and schedules an activity and a child; a pending timer."""
    e = EventType
    return [
        event(e.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        event(e.EVENT_TYPE_MARKER_RECORDED, marker_recorded_event_attributes={"marker_name": LOCAL_ACTIVITY_MARKER}),
        event(e.EVENT_TYPE_MARKER_RECORDED, marker_recorded_event_attributes={"marker_name": "core_patch"}),
        event(e.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES),
        event(
            e.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            activity_task_scheduled_event_attributes={"activity_type": {"name": "users.issue_verification_token"}},
        ),
        event(e.EVENT_TYPE_ACTIVITY_TASK_STARTED),
        event(e.EVENT_TYPE_ACTIVITY_TASK_COMPLETED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        event(
            e.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
            start_child_workflow_execution_initiated_event_attributes={"workflow_id": "email-1"},
        ),
        event(e.EVENT_TYPE_TIMER_STARTED, timer_started_event_attributes={"timer_id": "1"}),
        event(e.EVENT_TYPE_TIMER_FIRED, timer_fired_event_attributes={"timer_id": "1"}),
        event(e.EVENT_TYPE_TIMER_STARTED, timer_started_event_attributes={"timer_id": "2"}),
    ]


def test_count_reads_the_round_trips_of_a_history():
    shape = count(registration_like())
    assert (shape.events, shape.workflow_tasks, shape.activities, shape.local_activities) == (17, 2, 1, 1)
    assert (shape.timers_fired, shape.timers_pending, shape.upserts) == (1, 1, 1)
    assert shape.activity_types == ["users.issue_verification_token"]
    assert shape.child_ids == ["email-1"]


def test_a_refused_workflow_task_is_counted_apart():
    """A signal during the task that closes a workflow: the server refuses the task, the next one does it again."""
    e = EventType
    refused = [
        event(e.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_FAILED),
        event(e.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_STARTED),
        event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        event(e.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
    ]
    shape = count(refused)
    assert (shape.events, shape.workflow_tasks, shape.workflow_tasks_failed) == (9, 1, 1)
    assert shape.describe().startswith("9 events, 1 workflow tasks (+1 failed), ")
    assert count(registration_like()).workflow_tasks_failed == 0


def test_the_plan_reproduces_the_shape_with_its_children():
    parent, child = count(registration_like()), count(registration_like()[:4])
    parent.children.append(child)
    plan = parent.plan()
    assert plan == {
        "activities": 1,
        "local_activities": 1,
        "timers_fired": 1,
        "timers_pending": 1,
        "children": [
            {
                "activities": 0,
                "local_activities": 0,
                "timers_fired": 0,
                "timers_pending": 0,
                "children": [],
                "handed_over": [],
            }
        ],
        "handed_over": [],
    }
    # the journey counts the child's history too
    assert (parent.journey_events, parent.journey_workflow_tasks) == (17 + 4, 2 + 1)
    # bare: first task, one per activity, fired timer and child start; the child's own first task
    assert bare_workflow_tasks(plan) == 1 + 1 + 1 + 1 + 1


def test_a_workflow_handed_over_by_a_local_activity_counts_in_the_journey_and_the_plan():
    """A billing cycle's receipt: started from one of the cycle's local activities, not as a child."""
    cycle, receipt = count(registration_like()[:5]), count(registration_like()[:4])
    cycle.handed_over.append(receipt)
    plan = cycle.plan()
    assert plan["local_activities"] == 1 and plan["children"] == [] and len(plan["handed_over"]) == 1
    assert (cycle.journey_events, cycle.journey_workflow_tasks) == (5 + 4, 1 + 1)
    # bare: its first task (the hand-over runs inside it), then the started workflow's first task
    assert bare_workflow_tasks(plan) == 1 + 1


def test_the_shape_of_a_recorded_history_matches_its_events():
    path = HISTORIES / "registration_verified.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    raw = json.loads(path.read_text())["events"]

    def n(kind: str) -> int:
        return sum(1 for e in raw if e["eventType"] in (kind, f"EVENT_TYPE_{kind}"))

    shape = count(history.events)
    assert shape.events == len(raw)
    assert shape.workflow_tasks == n("WORKFLOW_TASK_COMPLETED")
    assert shape.activities == n("ACTIVITY_TASK_SCHEDULED")
    assert len(shape.child_ids) == n("START_CHILD_WORKFLOW_EXECUTION_INITIATED")


def test_json_has_the_issue_keys_per_section(tmp_path):
    shape = count(registration_like())
    figures = {
        "registration": saga_section(2.0, 4.0, 1.0, shape),
        "emails": saga_section(6.0, 3.0, 4.0, shape, raw_smtp_rate=60.0, raw_smtp_ratio=0.1),
        "billing": saga_section(5.0, 5.0, 5.0, shape),
        "logins": {
            "rate": 5.0,
            "argon2_rate": 6.0,
            "ratio": 5 / 6,
            "healthz_p99_idle_ms": 9.0,
            "healthz_p99_storm_ms": 18.0,
            "healthz_p99_ratio": 2.0,
        },
    }
    path = tmp_path / "bench.json"
    write_json(path, figures)
    sections = json.loads(path.read_text())["sections"]
    assert set(sections) == {"registration", "logins", "emails", "billing"}
    assert set(sections["registration"]) == set(sections["billing"]) == SAGA_KEYS
    assert set(sections["emails"]) == SAGA_KEYS | {"raw_smtp_rate", "raw_smtp_ratio"}
    assert sections["registration"]["naive_ratio"] == 0.5
    assert sections["registration"]["same_shape_ratio"] == 2.0
    assert sections["registration"]["events_per_journey"] == 17


def bare_worker(client: Client, task_queue: str, noop_activity=noop) -> Worker:
    """The bench's bare-workflow worker. Unsandboxed: the bench runs its module as __main__; imported here, its
    package's argparse trips the sandbox."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ShapedWorkflow],
        activities=[noop_activity, start_shaped],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )


async def test_the_bare_workflow_hands_off_through_a_local_activity(own_ts_client, task_queue):
    started = {"activities": 0, "local_activities": 0, "timers_fired": 0, "timers_pending": 0, "children": []}
    plan = {**started, "local_activities": 2, "handed_over": [started]}  # a no-op and the hand-over
    async with bare_worker(own_ts_client, task_queue):
        handle = await own_ts_client.start_workflow(
            ShapedWorkflow.run, plan, id=f"shaped-{task_queue}", task_queue=task_queue
        )
        (handed_over,) = await handle.result()
        assert await own_ts_client.get_workflow_handle(handed_over, result_type=list[str]).result() == []
        shape = count([e async for e in handle.fetch_history_events()])
    # one local activity of its own and the hand-off: two markers, no child, the first task only
    assert (shape.local_activities, shape.child_ids, shape.workflow_tasks) == (2, [], 1)


async def test_a_baseline_timed_to_its_results_still_finishes_its_hand_overs_before_the_next_phase(own_ts_client):
    """Billing's bare workflows are timed to their results, as the cycles are, but their hand-overs (the receipts'
    shape) must not run on into the real cycles' phase: that phase's time and CPU would carry them."""
    release, holding = asyncio.Event(), []

    @activity.defn(name="bench.noop")  # the bare workflows' no-op, held until released
    async def held(step: int) -> int:
        holding.append(step)
        await release.wait()
        return step

    leaf = {"activities": 1, "local_activities": 0, "timers_fired": 0, "timers_pending": 0, "children": []}
    plan = {**leaf, "activities": 0, "local_activities": 1, "handed_over": [leaf]}  # only the hand-over has work
    address = own_ts_client.service_client.config.target_host
    plain = Client(own_ts_client.service_client, namespace=own_ts_client.namespace)  # the bench's: no codec
    async with bare_worker(plain, NOOP_TASK_QUEUE, noop_activity=held):
        phase = asyncio.create_task(bench_shaped_workflows(address, plan, 2, 2, time_children=False))
        async with asyncio.timeout(30):
            while len(holding) < 2:  # both bare workflows have returned and handed over; both hand-overs run
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert not phase.done(), "the phase ended with its hand-overs still running"
        release.set()
        seconds = await asyncio.wait_for(phase, 30)
    assert seconds > 0

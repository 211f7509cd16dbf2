"""What a journey costs Temporal, read from real histories, and the bare workflow of the same shape.

A journey is a workflow plus the child workflows it started (a registration and its verification email). Its
shape counts what drives server round trips: workflow tasks, activities, local activities (markers), child
workflows and timers (fired, or started and still pending when the journey's figure was taken), and the
history length in events. A workflow a journey starts through its worker's client from a local activity (a billing
cycle's receipt) is not a child: it is followed as `handed_over`, found by its id. `prognet_dev.bench.noop_workflow.
ShapedWorkflow` runs the same counts with no-op activities, so "same-shape ratio" compares our code with Temporal
doing the same amount of work by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType

LOCAL_ACTIVITY_MARKER = "core_local_activity"


@dataclass
class Shape:
    """One workflow's history, counted; `children` are the shapes of the child workflows it started."""

    events: int = 0
    workflow_tasks: int = 0  # completed workflow tasks
    workflow_tasks_failed: int = 0  # failed or timed out: each one runs again (a signal during a closing task)
    activities: int = 0
    local_activities: int = 0
    timers_fired: int = 0
    timers_pending: int = 0  # started, neither fired nor cancelled (a 24 h verification window)
    upserts: int = 0  # search-attribute upserts (each one an event)
    activity_types: list[str] = field(default_factory=list)
    children: list[Shape] = field(default_factory=list)
    child_ids: list[str] = field(default_factory=list)
    # started by one of its local activities (each also counted in `local_activities`), not as children
    handed_over: list[Shape] = field(default_factory=list)

    @property
    def _started(self) -> list[Shape]:
        return self.children + self.handed_over

    @property
    def journey_events(self) -> int:
        return self.events + sum(c.journey_events for c in self._started)

    @property
    def journey_workflow_tasks(self) -> int:
        return self.workflow_tasks + sum(c.journey_workflow_tasks for c in self._started)

    def describe(self) -> str:
        failed = f" (+{self.workflow_tasks_failed} failed)" if self.workflow_tasks_failed else ""
        text = (
            f"{self.events} events, {self.workflow_tasks} workflow tasks{failed}, {self.activities} activities, "
            f"{self.local_activities} local, {self.timers_fired + self.timers_pending} timers, "
            f"{self.upserts} upserts"
        )
        for child in self.children:
            text += f"; child: {child.describe()}"
        for started in self.handed_over:
            text += f"; started by a local activity: {started.describe()}"
        return text

    def plan(self) -> dict[str, Any]:
        """The input of the bare `ShapedWorkflow` that reproduces this shape (JSON-able, recursive)."""
        return {
            "activities": self.activities,
            "local_activities": self.local_activities,
            "timers_fired": self.timers_fired,
            "timers_pending": self.timers_pending,
            "children": [c.plan() for c in self.children],
            "handed_over": [c.plan() for c in self.handed_over],
        }


def count(events: Iterable[Any]) -> Shape:
    """Count one history's events (`temporalio.api.history.v1.HistoryEvent`s); children are not followed."""
    shape = Shape()
    started_timers: set[str] = set()
    for e in events:
        shape.events += 1
        t = e.event_type
        if t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            shape.workflow_tasks += 1
        elif t in (EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED, EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT):
            shape.workflow_tasks_failed += 1
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            shape.activities += 1
            shape.activity_types.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif t == EventType.EVENT_TYPE_MARKER_RECORDED:
            if e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER:
                shape.local_activities += 1
        elif t == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            shape.child_ids.append(e.start_child_workflow_execution_initiated_event_attributes.workflow_id)
        elif t == EventType.EVENT_TYPE_TIMER_STARTED:
            started_timers.add(e.timer_started_event_attributes.timer_id)
        elif t == EventType.EVENT_TYPE_TIMER_FIRED:
            started_timers.discard(e.timer_fired_event_attributes.timer_id)
            shape.timers_fired += 1
        elif t == EventType.EVENT_TYPE_TIMER_CANCELED:
            started_timers.discard(e.timer_canceled_event_attributes.timer_id)
        elif t == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            shape.upserts += 1
    shape.timers_pending = len(started_timers)
    return shape


async def journey_shape(client, workflow_id: str, depth: int = 2, handed_over: Iterable[str] = ()) -> Shape:
    """The shape of `workflow_id`'s history and, `depth` levels down, of the child workflows it started; plus
    the workflows `handed_over` (ids) it started from a local activity."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    shape = count(history.events)
    if depth > 0:
        for child_id in shape.child_ids:
            shape.children.append(await journey_shape(client, child_id, depth - 1))
        for started_id in handed_over:
            shape.handed_over.append(await journey_shape(client, started_id, depth - 1))
    return shape


def bare_workflow_tasks(plan: dict[str, Any]) -> int:
    """Workflow tasks the bare `ShapedWorkflow` takes for `plan` (itself and its children): the first, one per
    activity, one per fired timer and one per child started (children are abandoned, not awaited); a workflow
    handed over by a local activity costs none of its own."""
    started = plan["children"] + plan.get("handed_over", [])
    own = 1 + plan["activities"] + plan["timers_fired"] + len(plan["children"])
    return own + sum(bare_workflow_tasks(c) for c in started)


def saga_section(
    rate: float, naive_rate: float, same_shape_rate: float, shape: Shape, **extra: float
) -> dict[str, float | int]:
    """One saga's entry of `prognet bench --json` (the keys issue 16 lists)."""
    return {
        "rate": rate,
        "naive_baseline_rate": naive_rate,
        "naive_ratio": rate / naive_rate,
        "same_shape_baseline_rate": same_shape_rate,
        "same_shape_ratio": rate / same_shape_rate,
        "events_per_journey": shape.journey_events,
        **extra,
    }

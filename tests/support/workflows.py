"""Polling a saga's state and the email worker that unit tests of sagas share."""

from __future__ import annotations

import asyncio
import json

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from models import activity_names as act
from models.contracts import SagaState
from models.names import EMAIL_TASK_QUEUE, QUERY_SAGA_STATE
from tests.support.fake_email import FakeEmailDelivery


async def saga_state(handle: WorkflowHandle) -> SagaState:
    return await handle.query(QUERY_SAGA_STATE, result_type=SagaState)


async def wait_for(handle: WorkflowHandle, predicate, timeout: float = 10.0) -> SagaState:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await saga_state(handle)
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"saga never reached the expected state: {state}"
        await asyncio.sleep(0.05)


async def wait_for_event(handle: WorkflowHandle, event_type: EventType.ValueType, timeout: float = 20.0) -> None:
    """Until the workflow's history holds an event of `event_type`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while event_type not in [e.event_type async for e in handle.fetch_history_events()]:
        assert asyncio.get_running_loop().time() < deadline, f"no {EventType.Name(event_type)} in the history"
        await asyncio.sleep(0.05)


def email_worker(client: Client) -> Worker:
    return Worker(client, task_queue=EMAIL_TASK_QUEUE, workflows=[FakeEmailDelivery])


LOCAL_ACTIVITY_MARKER = "core_local_activity"


async def started_workflows(client: Client, workflow_id: str) -> list[str]:
    """The workflows this one started: its children, and the emails it handed over by a local activity (the
    marker of `email.start_delivery` holds the started workflow's id as its result), from its history."""
    return [started for _, started in await started_at(client, workflow_id)]


async def started_at(client: Client, workflow_id: str) -> list[tuple[int, str]]:
    """`started_workflows` with the index in this workflow's history of the event that started each."""
    started = []
    index = 0
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            started.append((index, event.start_child_workflow_execution_initiated_event_attributes.workflow_id))
        elif event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER and "result" in marker.details:
                data = json.loads(marker.details["data"].payloads[0].data)
                if data.get("activity_type") == act.START_EMAIL_DELIVERY:
                    payloads = list(marker.details["result"].payloads)
                    [started_id] = await client.data_converter.decode(payloads, [str])
                    started.append((index, started_id))
        index += 1
    return started


async def history_story(client: Client, workflow_id: str, last: int = 25) -> str:
    """A workflow's status and its last `last` history events, one line each with what failed or is pending:
    what a test prints when a saga did not finish in time."""
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    lines = [f"{workflow_id}: {description.status.name if description.status else 'unknown'}"]
    for pending in description.raw_description.pending_activities:
        failure = pending.last_failure.message
        lines.append(f"  pending activity {pending.activity_type.name}: attempt {pending.attempt}, {failure}")
    events = [event async for event in handle.fetch_history_events()]
    for event in events[-last:]:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        failure = next(
            (getattr(event, field).failure.message for field in _FAILURE_FIELDS if event.HasField(field)), ""
        )
        lines.append(f"  {event.event_id:>4} {event.event_time.ToDatetime():%H:%M:%S.%f} {kind} {failure}".rstrip())
    return "\n".join(lines)


_FAILURE_FIELDS = (
    "activity_task_failed_event_attributes",
    "workflow_task_failed_event_attributes",
    "workflow_execution_failed_event_attributes",
)

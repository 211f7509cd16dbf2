"""Progress of the caller's own sagas. Someone else's workflow is answered exactly like a missing one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from sse_starlette import ServerSentEvent
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Caller, CurrentUser, SettingsDep, TemporalConnectorDep
from api.problems import NOT_FOUND, Problem, problem_responses
from api.schemas import WorkflowView
from api.sse import SEP, Beat, EventStream, Guard, admit, end_reason, ended, message, stream_responses
from api.temporal_client import TemporalConnector
from models.contracts import SagaState
from models.names import QUERY_SAGA_STATE, SA_USER_ID

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

QUERY_TIMEOUT = timedelta(seconds=3)


WorkflowIdPath = Annotated[str, Path(max_length=255)]
SAGA_POLL_SECONDS = 0.5  # how often a progress stream reads the saga's state


async def owned_workflow(
    workflow_id: str, caller: Caller, temporal: TemporalConnector
) -> tuple[WorkflowHandle, WorkflowExecutionDescription]:
    """The caller's own workflow; anyone else's, or a missing one, is 404."""
    not_found = Problem(NOT_FOUND, "No workflow with this id belongs to you.")
    client = await temporal.get()
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise not_found from None
        raise
    if description.typed_search_attributes.get(SA_USER_ID) != str(caller.user_id):
        raise not_found
    return handle, description


async def workflow_view(handle: WorkflowHandle, description: WorkflowExecutionDescription) -> WorkflowView:
    try:
        saga: SagaState | None = await handle.query(QUERY_SAGA_STATE, result_type=SagaState, rpc_timeout=QUERY_TIMEOUT)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError, RPCError):
        saga = None
    return WorkflowView(
        workflow_id=handle.id,
        type=description.workflow_type,
        status=description.status.name.lower() if description.status else "unknown",
        started_at=description.start_time,
        closed_at=description.close_time,
        saga=saga,
    )


@router.get(
    "/{workflow_id}",
    response_model=WorkflowView,
    summary="Status and saga state of one of your workflows",
    responses=problem_responses(401, 404, 503),
)
async def get_workflow(
    workflow_id: WorkflowIdPath, caller: CurrentUser, temporal: TemporalConnectorDep
) -> WorkflowView:
    return await workflow_view(*await owned_workflow(workflow_id, caller, temporal))


@router.get(
    "/{workflow_id}/stream",
    summary="Follow one of your sagas as server-sent events",
    description="Progress of a saga (registration, tenant provisioning, paid sign-up) without polling: "
    "`event: progress` with the workflow view (as `GET /v1/workflows/{workflow_id}` answers) whenever its status "
    "or saga step changes, then `event: end` with the final view once the workflow has closed, and the stream "
    "ends. Comment lines (`: heartbeat`) keep idle connections open. `event: error` ends the stream early, with "
    "a `reason`: `session-ended`, `slow-consumer`, `workflow-engine-unavailable`.",
    response_class=EventStream,
    status_code=200,
    responses=stream_responses("The saga's progress."),
)
async def stream_workflow(
    request: Request,
    workflow_id: WorkflowIdPath,
    caller: CurrentUser,
    temporal: TemporalConnectorDep,
    settings: SettingsDep,
) -> EventStream:
    handle, _ = await owned_workflow(workflow_id, caller, temporal)
    guard = await admit(request.app.state, caller, settings)
    messages = saga_messages(handle, guard, settings.sse_heartbeat_seconds)
    return EventStream(messages, send_timeout=settings.sse_send_timeout_seconds, on_close=guard.close)


async def saga_messages(handle: WorkflowHandle, guard: Guard, heartbeat: float) -> AsyncIterator[ServerSentEvent]:
    """The workflow's view each time it changes, until the workflow closes (then `end`) or the guard ends it."""
    last: WorkflowView | None = None
    beat = Beat(heartbeat)
    try:
        while True:
            view = await workflow_view(handle, await handle.describe())
            if view.status != "running":
                yield message("end", view.model_dump(mode="json"))
                return
            if view != last:
                yield message("progress", view.model_dump(mode="json"))
                last = view
            if beat.left() == 0:
                if (final := await guard.check()) is not None:
                    yield final
                    return
                yield ServerSentEvent(comment="heartbeat", sep=SEP)
                beat.next()
            await asyncio.sleep(min(SAGA_POLL_SECONDS, beat.left()))
    except Exception as exc:
        reason = end_reason(exc)
        if reason is None:
            raise
        log.warning("saga stream ended: %s", reason, extra={"workflow_id": handle.id})
        yield ended(reason, "A service this stream reads went away; reconnect to follow on.")

"""Progress of the caller's own sagas. Someone else's workflow is answered exactly like a missing one."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path
from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentUser, TemporalConnectorDep
from api.problems import NOT_FOUND, Problem, problem_responses
from api.schemas import WorkflowView
from models.contracts import SagaState
from models.names import QUERY_SAGA_STATE, SA_USER_ID

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

QUERY_TIMEOUT = timedelta(seconds=3)


@router.get(
    "/{workflow_id}",
    response_model=WorkflowView,
    summary="Status and saga state of one of your workflows",
    responses=problem_responses(401, 404, 503),
)
async def get_workflow(
    workflow_id: Annotated[str, Path(max_length=255)], caller: CurrentUser, temporal: TemporalConnectorDep
) -> WorkflowView:
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
    try:
        saga: SagaState | None = await handle.query(QUERY_SAGA_STATE, result_type=SagaState, rpc_timeout=QUERY_TIMEOUT)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError, RPCError):
        saga = None
    return WorkflowView(
        workflow_id=workflow_id,
        type=description.workflow_type,
        status=description.status.name.lower() if description.status else "unknown",
        started_at=description.start_time,
        closed_at=description.close_time,
        saga=saga,
    )

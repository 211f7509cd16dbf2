"""The workflow's clock at the moment it scheduled a local activity, for fake activities to record.

Under the time-skipping test server a local activity's `activity.info().scheduled_time` is the wall clock (the
worker schedules it, not the server), while a regular activity's is the server's skipped time. A test that counts
days between charges reads `scheduled_at()`, which for a local activity is `workflow.now()` when the workflow
scheduled it, carried in a header by `WorkflowClock` (add it to the worker's interceptors).
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from typing import Any

from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

HEADER = "test-workflow-now"
_scheduled: ContextVar[datetime | None] = ContextVar("workflow_now_at_schedule", default=None)


def scheduled_at() -> datetime:
    """When the running activity was scheduled, on the workflow's clock."""
    return _scheduled.get() or activity.info().scheduled_time


class _Outbound(WorkflowOutboundInterceptor):
    def start_local_activity(self, input: StartLocalActivityInput) -> Any:
        now = Payload(metadata={"encoding": b"binary/plain"}, data=workflow.now().isoformat().encode())
        input.headers = {**input.headers, HEADER: now}
        return super().start_local_activity(input)


class _WorkflowInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        header = input.headers.get(HEADER)
        token = _scheduled.set(datetime.fromisoformat(header.data.decode()) if header is not None else None)
        try:
            return await super().execute_activity(input)
        finally:
            _scheduled.reset(token)


class WorkflowClock(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _WorkflowInbound

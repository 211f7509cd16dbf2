"""The worker's interceptor: metrics the sagas report, and open circuits turned into Temporal's retry delay.

- Workflows stay deterministic and never touch Prometheus: the Saga helper calls the extern functions
  registered here (`SAGA_STATUS`, `COMPENSATION_FAILED`) only when not replaying, so a saga replayed after
  a restart is not counted twice. This is the SDK's escape hatch for side effects of workflow code (its
  OpenTelemetry interceptor uses it the same way).
- An activity that meets an open circuit (CircuitOpenError) fails with a retryable
  `ApplicationError(type=CircuitOpen, next_retry_delay=<until the breaker lets a call through again>)`.
"""

from __future__ import annotations

from typing import Any

from temporalio import worker

from activities.circuits import circuit_open_error
from models.names import EXTERN_COMPENSATION_FAILED, EXTERN_SAGA_STATUS
from prognet.circuit import CircuitOpenError
from prognet.metrics import compensation_failed, saga_status


class _CircuitActivities(worker.ActivityInboundInterceptor):
    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except CircuitOpenError as exc:
            raise circuit_open_error(exc) from None


class ObservabilityInterceptor(worker.Interceptor):
    def intercept_activity(self, next: worker.ActivityInboundInterceptor) -> worker.ActivityInboundInterceptor:
        return _CircuitActivities(next)

    def workflow_interceptor_class(
        self, input: worker.WorkflowInterceptorClassInput
    ) -> type[worker.WorkflowInboundInterceptor] | None:
        input.unsafe_extern_functions[EXTERN_SAGA_STATUS] = saga_status
        input.unsafe_extern_functions[EXTERN_COMPENSATION_FAILED] = compensation_failed
        return None

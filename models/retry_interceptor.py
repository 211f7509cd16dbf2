"""Every saga a process starts records the process's retry settings (RETRY_*) in its input (models/retry_policies.py).

A client interceptor on the API's and the worker's clients, so no starter can forget it (the API's routers, the
worker's activities). An input that names its policies already (a child saga inheriting its parent's, a test)
is left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from temporalio.client import (
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)

from models.retry_policies import SagaRetryPolicies, WithRetryPolicies


def with_policies(args: Sequence[Any], policies: SagaRetryPolicies) -> list[Any]:
    return [
        arg.model_copy(update={"retry_policies": policies})
        if isinstance(arg, WithRetryPolicies) and "retry_policies" not in arg.model_fields_set
        else arg
        for arg in args
    ]


class RetryPoliciesInterceptor(Interceptor):
    def __init__(self, policies: SagaRetryPolicies) -> None:
        self.policies = policies

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Outbound(next, self.policies)


class _Outbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, policies: SagaRetryPolicies) -> None:
        super().__init__(next)
        self.policies = policies

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        input.args = with_policies(input.args, self.policies)
        return await super().start_workflow(input)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        start = input.start_workflow_input
        input.start_workflow_input = dataclasses.replace(start, args=with_policies(start.args, self.policies))
        return await super().start_update_with_start_workflow(input)

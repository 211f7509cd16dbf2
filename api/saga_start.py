"""Starting a saga from HTTP, the one way every router does it.

A router says what is specific to it (the workflow, its id, input and search attributes, the update that
answers, how to render the answer); this module does the rest:
- the `Idempotency-Key` header, and ids derived from it (`keyed_id`): a retried request finds the same saga;
- the start: conflict policy USE_EXISTING (a retry while the saga runs attaches to it) and reuse policy
  REJECT_DUPLICATE (a retry after it closed never starts it again), with the request's fingerprint in the
  saga's memo;
- the replay: whenever the key names a saga that exists, that saga's fingerprint must be this request's, or the
  answer is 422 `idempotency-key-reused` — while it runs and after it closed alike;
- the answer cap (`answer_within`): not confirmed within 15 s, a 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Header
from pydantic import BaseModel
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.problems import IDEMPOTENCY_KEY_REUSED, Problem, refusal
from api.temporal_client import answer_within
from models.errors import error_type
from models.names import TASK_QUEUE

log = logging.getLogger("prognet.api")

T = TypeVar("T")

# Every keyed id is uuid5(IDEMPOTENCY_NAMESPACE, "<kind>:<scope…>:<Idempotency-Key>").
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c6f7e-8a51-5f0e-9c43-6a4f3d2e1b70")
FINGERPRINT_MEMO = "request_fingerprint"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Retry-safe key: the same key with the same body returns the same result and never starts (or "
        "charges) twice; the same key with another body is 422 `idempotency-key-reused`.",
    ),
]


def request_fingerprint(*fields: str) -> str:
    """Of the request's normalised fields (never a password): what a replayed Idempotency-Key must match."""
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def keyed_id(idempotency_key: str | None, kind: str, *scope: object) -> uuid.UUID:
    """The id a request's saga works on: derived from the Idempotency-Key (and whose key it is), so a retry
    finds the same saga; without a key, a new one."""
    if not idempotency_key:
        return uuid.uuid4()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, ":".join([kind, *map(str, scope), idempotency_key]))


@dataclass(frozen=True)
class SagaStart:
    """What a router says about the saga a request starts."""

    workflow: str
    workflow_id: str
    input: BaseModel
    fingerprint: str  # of the normalised request: a replayed Idempotency-Key must come with the same one
    reused_detail: str  # the 422's detail when it does not
    search_attributes: list[SearchAttributePair]
    summary: str


@dataclass(frozen=True)
class SagaReply(Generic[T]):
    """How a start (or a replay) came out."""

    workflow_id: str
    answer: T | None = None  # the update's answer: the saga runs (started now, or earlier under this key)
    failure: BaseException | None = None  # why the update failed, or why the saga under this key ended failed
    closed: str | None = None  # the saga under this key had already closed: how ("completed", "failed", …)

    @property
    def error_type(self) -> str | None:
        return error_type(self.failure)

    def raise_if_refused(self) -> None:
        """The saga refused the request, now or when this key first ran (a taken email, a taken slug): its
        problem (api/problems.REFUSALS). An update that failed in any other way is unexpected: re-raised."""
        if (problem := refusal(self.error_type)) is not None:
            log.info("saga refused", extra={"workflow_id": self.workflow_id, "error_type": self.error_type})
            raise problem from None
        if self.failure is not None and self.closed is None:
            raise self.failure


async def start_saga(
    client: Client,
    saga: SagaStart,
    idempotency_key: str | None,
    *,
    update: str | None = None,
    result_type: type[T] | None = None,
) -> SagaReply[T]:
    """Start the saga (or find the one this Idempotency-Key started) and, with `update`, wait for its answer."""
    options: dict[str, Any] = dict(
        id=saga.workflow_id,
        task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        memo={FINGERPRINT_MEMO: saga.fingerprint},
        search_attributes=TypedSearchAttributes(saga.search_attributes),
        static_summary=saga.summary,
    )
    reply: SagaReply[T]
    operation: WithStartWorkflowOperation | None = None
    try:
        if update is None:
            await client.start_workflow(saga.workflow, saga.input, **options)
            reply = SagaReply(saga.workflow_id)
        else:
            operation = WithStartWorkflowOperation(saga.workflow, saga.input, **options)
            reply = SagaReply(
                saga.workflow_id,
                answer=await answer_within(
                    client.execute_update_with_start_workflow(
                        update, start_workflow_operation=operation, result_type=result_type
                    )
                ),
            )
    except WorkflowUpdateFailedError as exc:
        reply = SagaReply(saga.workflow_id, failure=exc)
    except WorkflowAlreadyStartedError:
        if operation is not None:
            await _settle(operation)
        return await _closed(client, saga)
    if idempotency_key:  # the key may have named a running saga, started for another request
        await earlier_start(client, saga)
    return reply


async def _settle(operation: WithStartWorkflowOperation) -> None:
    """Retrieve the start's own outcome, which the SDK keeps in a future of its own: an unread failure there
    would be logged as "Future exception was never retrieved" when it is collected."""
    with contextlib.suppress(WorkflowAlreadyStartedError, RPCError):
        await operation.workflow_handle()


async def earlier_start(client: Client, saga: SagaStart) -> WorkflowExecutionDescription | None:
    """The saga this request's key already started, if any; 422 when it was started for another request."""
    try:
        return await _same_request(client, saga)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _same_request(client: Client, saga: SagaStart) -> WorkflowExecutionDescription:
    description = await client.get_workflow_handle(saga.workflow_id).describe()
    if await description.memo_value(FINGERPRINT_MEMO, None) not in (None, saga.fingerprint):
        raise Problem(IDEMPOTENCY_KEY_REUSED, saga.reused_detail)
    return description


async def _closed(client: Client, saga: SagaStart) -> SagaReply[Any]:
    """The saga under this key has already closed: the request is a replay, answered as that saga ended."""
    status = (await _same_request(client, saga)).status
    failure: BaseException | None = None
    if status != WorkflowExecutionStatus.COMPLETED:
        try:
            await client.get_workflow_handle(saga.workflow_id).result()
        except WorkflowFailureError as exc:
            failure = exc
    return SagaReply(saga.workflow_id, failure=failure, closed=status.name.lower() if status else "unknown")

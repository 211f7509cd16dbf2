"""Starting a saga from HTTP, the one way every router does it.

A router says what is specific to it (the workflow, its id, input and search attributes, the update that
answers, how to render the answer); this module does the rest:
- the `Idempotency-Key` header, and ids derived from it (`RequestKey.id`): a retried request finds the same saga;
- the start: conflict policy USE_EXISTING (a retry while the saga runs attaches to it) and reuse policy
  REJECT_DUPLICATE (a retry after it closed never starts it again), with the request's fingerprint in the
  saga's memo;
- the replay: whenever the key names a saga that exists, that saga's fingerprint must be this request's, or the
  answer is 422 `idempotency-key-reused` — while it runs and after it closed alike;
- the answer cap (`answer_within`): not confirmed within 15 s, a 503 with Retry-After — and, like a 503 for an
  unreachable Temporal, it names the saga and the resource it works on, with a `Location` to follow;
- a request without an Idempotency-Key whose answer was such a 503 is remembered for RETRY_WINDOW_SECONDS
  (`RequestKey`): the same request again, still without a key, finds that saga instead of starting another.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Header, Response
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError
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

from api.problems import IDEMPOTENCY_KEY_REUSED, WORKFLOW_ENGINE_UNAVAILABLE, Problem, engine_unavailable, refusal
from api.temporal_client import answer_within
from models.errors import error_type
from models.names import TASK_QUEUE
from prognet.settings import Settings

log = logging.getLogger("prognet.api")

T = TypeVar("T")

# Every keyed id is uuid5(IDEMPOTENCY_NAMESPACE, "<kind>:<scope…>:<Idempotency-Key>").
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c6f7e-8a51-5f0e-9c43-6a4f3d2e1b70")
FINGERPRINT_MEMO = "request_fingerprint"
RETRY_WINDOW_SECONDS = 600  # how long a keyless request answered 503 is remembered for its plain retry
RETRY_PREFIX = "saga:retry:"

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


def keyed_id(key: str, kind: str, *scope: object) -> uuid.UUID:
    """The id a request's saga works on: derived from the request's key (`RequestKey.value`) and whose key it
    is, so a retry finds the same saga."""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, ":".join([kind, *map(str, scope), key]))


@dataclass(frozen=True)
class RequestKey:
    """The key a request's ids derive from: its Idempotency-Key or, without one, a fresh key — or the key of the
    same request (same caller, same fingerprint, same secret fields) that was answered 503 a moment ago."""

    value: str
    given: bool  # the caller sent it
    kind: str = ""  # what the request starts ("register", "tenant", …)
    scope: tuple[object, ...] = ()  # whose request it is
    recovered: bool = False  # a keyless retry of a request answered 503: the key that request had
    redis: Redis | None = None
    slot: str | None = None  # where a keyless request's key is remembered after a 503

    def id(self, *part: object) -> uuid.UUID:
        """The id this request's saga works on (`part` names one of several, e.g. a sign-up's user and tenant)."""
        return keyed_id(self.value, self.kind, *self.scope, *part)

    @property
    def may_name_earlier(self) -> bool:
        """Whether a saga may already exist under this key."""
        return self.given or self.recovered

    async def remember(self) -> None:
        """The answer is a 503 although the saga may have started: an identical retry must find it."""
        if self.redis is None or self.slot is None:
            return
        try:
            await self.redis.set(self.slot, self.value, ex=RETRY_WINDOW_SECONDS, nx=True)
        except RedisError as exc:  # the retry then starts afresh, as it would have without this
            log.warning("keyless retry not remembered", extra={"error": type(exc).__name__})


async def request_key(
    redis: Redis,
    settings: Settings,
    idempotency_key: str | None,
    kind: str,
    *scope: object,
    fingerprint: str,
    secret: str = "",
) -> RequestKey:
    """`idempotency_key` when sent; else the key of this very request's recent 503, else a fresh one. `scope` is
    whose request it is (the caller); `secret` (a password) tells an identical retry from a stranger's request
    with the same visible fields, and is never stored (only an HMAC of it names the Redis slot)."""
    if idempotency_key:
        return RequestKey(idempotency_key, given=True, kind=kind, scope=scope)
    name = "\n".join([kind, *map(str, scope), fingerprint, secret])
    slot = RETRY_PREFIX + hmac.new(settings.derived_key("keyless-retry"), name.encode(), hashlib.sha256).hexdigest()
    try:
        earlier = await redis.get(slot)
    except RedisError as exc:
        log.warning("keyless retry not looked up", extra={"error": type(exc).__name__})
        earlier = None
    if earlier:
        value = earlier.decode() if isinstance(earlier, bytes) else str(earlier)
        return RequestKey(value, given=False, kind=kind, scope=scope, recovered=True)
    return RequestKey(f"keyless-{uuid.uuid4()}", given=False, kind=kind, scope=scope, redis=redis, slot=slot)


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
    ids: dict[str, str]  # the resource's ids ("user_id": …), named in a 503 with the workflow id
    location: str  # where the caller follows the outcome; a 503's Location
    links: dict[str, str] | None = None  # a 503's links (default: self = location)


def unconfirmed(saga: SagaStart, detail: str, retry_after: str = "5", **extensions: Any) -> Problem:
    """The 503 of a request whose saga may have started: what it works on, and where to follow it."""
    return Problem(
        WORKFLOW_ENGINE_UNAVAILABLE,
        detail,
        headers={"Retry-After": retry_after, "Location": saga.location},
        workflow_id=saga.workflow_id,
        **saga.ids,
        links=saga.links or {"self": saga.location},
        **extensions,
    )


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
    key: RequestKey,
    *,
    update: str | None = None,
    result_type: type[T] | None = None,
    response: Response | None = None,
) -> SagaReply[T]:
    """Start the saga (or find the one this request's key started) and, with `update`, wait for its answer;
    the answer's `Location` (on `response`) is where the caller follows it.
    Not confirmed (the answer cap, or Temporal unreachable): a 503 naming the saga, remembered for a keyless
    retry."""
    try:
        reply = await _start_saga(client, saga, key, update=update, result_type=result_type)
        if response is not None:
            response.headers["Location"] = saga.location
        return reply
    except Problem as exc:
        if exc.kind is not WORKFLOW_ENGINE_UNAVAILABLE:
            raise
        await key.remember()
        raise unconfirmed(
            saga,
            "The request was accepted but not confirmed in time; repeat the same request (with the same "
            "Idempotency-Key, if you sent one), or follow Location, to see its outcome.",
            exc.headers.get("Retry-After", "5"),
        ) from None
    except RPCError as exc:
        if not engine_unavailable(exc):
            raise
        await key.remember()
        log.warning("temporal unavailable at a saga's start", extra={"workflow_id": saga.workflow_id})
        raise unconfirmed(
            saga,
            "The workflow engine is unreachable; the request may have started. Retry the same request (with the "
            "same Idempotency-Key, if you sent one) to see its outcome.",
        ) from None


async def _start_saga(
    client: Client,
    saga: SagaStart,
    key: RequestKey,
    *,
    update: str | None,
    result_type: type[T] | None,
) -> SagaReply[T]:
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
    if key.given:  # the key may have named a running saga, started for another request
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

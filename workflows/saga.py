"""The saga primitive: forward steps that register their compensation, and an unwind that cannot be lost.

- A step registers its compensation *before* it runs, so a step that ran partly is still undone
  (compensations tolerate "nothing to undo"). A step is an activity or a child workflow; a child's
  compensation is an activity, or cancelling the child and waiting for its own unwind.
- On failure or cancellation the compensations run in reverse order, shielded from cancellation, each
  with its own retry policy; every outcome is recorded in the queryable `SagaState`.
- The pivot is the saga's point of no return (e.g. a payment that succeeded): the compensations registered
  before it are dropped, the steps after it only move forward (shielded from cancellation), and whatever
  cannot be taken back (an email) is done only after it.
- A compensation that still fails after its retries parks the saga in `awaiting_operator` until an
  operator sends the `operator_decision` signal (retry or skip). Nothing is swallowed silently: a
  compensation is recorded `done` only when it returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from models.contracts import CompensationRecord, OperatorDecision, SagaState, SagaStatusValue
    from models.errors import CIRCUIT_OPEN, failure_cause
    from models.names import (
        EXTERN_COMPENSATION_FAILED,
        EXTERN_SAGA_STATUS,
        QUERY_SAGA_STATE,
        SA_SAGA_STATUS,
        SA_SAGA_STEP,
        SIGNAL_OPERATOR_DECISION,
    )
    from models.retry_policies import SagaRetryPolicies, WithRetryPolicies

T = TypeVar("T")

# Retry policies come from the saga's input (models/retry_policies.py: per external service, from settings, recorded
# in history). An open circuit is not retried by Temporal inside a step: the saga waits out the cool-down on a
# timer, with "waiting: Stripe circuit open until …" in its details, then runs the step again (no attempt is used up).
STEP_TIMEOUT = timedelta(seconds=30)


def raise_if_cancel_requested() -> None:
    """Raise the workflow's cancellation if it was requested: for the awaits after which the SDK may have dropped
    it (see `wait_until` and `Saga.step`)."""
    if workflow.cancellation_reason() is not None:
        raise asyncio.CancelledError("the workflow's cancellation was requested")


async def wait_until(condition: Callable[[], bool], timeout: timedelta | None) -> bool:
    """Wait for `condition` at most `timeout` (None: no limit); False once the time is up.

    First raises `asyncio.CancelledError` if the workflow's cancellation was requested and never raised. The SDK
    (temporalio 1.35, sdk-python#352) drops a cancellation that arrives in the same workflow task as the result
    of a signal to another workflow or of a child: the await returns its result and the workflow runs on as if
    no cancel had come. That happens when the task that would have taken the result alone timed out (a worker
    killed, or too busy for 10 s): a billing cycle told its parent `past_due`, the customer cancelled, and the
    cycle went to sleep on its day-long dunning timer while its parent waited for it to unwind. The sagas that
    tell another workflow something and then wait long (a billing cycle, a registration) wait through here, so
    such a cancel unwinds them instead."""
    raise_if_cancel_requested()
    if condition():
        return True
    if timeout is not None and timeout <= timedelta(0):
        return False
    try:
        await workflow.wait_condition(condition, timeout=timeout)
    except TimeoutError:
        return False
    return True


@dataclass
class _Compensation:
    record: CompensationRecord
    undo: Callable[[], Awaitable[Any]]  # one attempt; raises ActivityError or ChildWorkflowError if it did not undo


class Saga:
    """Create one in the workflow's `__init__`; it registers the `saga_state` query and the operator signal."""

    def __init__(self, name: str, retry_policies: SagaRetryPolicies | None = None) -> None:
        self.state = SagaState(saga=name)
        self.retry_policies = retry_policies or SagaRetryPolicies()  # the saga input's (WithRetryPolicies)
        self._compensations: list[_Compensation] = []
        self._decisions: list[OperatorDecision] = []
        self._published: tuple[str, str | None] | None = None  # SagaStatus, SagaStep last upserted
        workflow.set_query_handler(QUERY_SAGA_STATE, self._query_state)
        workflow.set_signal_handler(SIGNAL_OPERATOR_DECISION, self._on_operator_decision)
        _report(EXTERN_SAGA_STATUS, name, "started")

    # --- state, visible to operators ---

    def _query_state(self) -> SagaState:
        return self.state

    def _on_operator_decision(self, decision: OperatorDecision) -> None:
        # Payloads arrive as dicts when sent from the UI/CLI without a type; accept both.
        if isinstance(decision, dict):
            decision = OperatorDecision.model_validate(decision)
        # A decision answers the compensation failing *now*: one sent twice, or while nothing waits, must not
        # be kept for a later failure (it would skip that compensation without anyone having seen it).
        if self.state.status != "awaiting_operator" or self._decisions:
            workflow.logger.warning(
                "operator decision ignored: the saga is not waiting for one (%s)", self.state.status
            )
            return
        self._decisions.append(decision)

    def _publish(self, details: str | None = None, *, upsert: bool = True) -> None:
        self.state.updated_at = workflow.now()
        # Each upsert is a history event: only a change is sent (current details cost no event). `upsert=False`
        # leaves the search attributes to the next status that is published (see `step`).
        published = (self.state.status, self.state.step)
        if upsert and published != self._published:
            self._published = published
            workflow.upsert_search_attributes(
                [
                    SA_SAGA_STATUS.value_set(self.state.status),
                    SA_SAGA_STEP.value_set(self.state.step),
                ]
            )
        if details is not None:
            workflow.set_current_details(details)

    def set_status(
        self,
        status: SagaStatusValue,
        *,
        step: str | None = None,
        waiting_for: str | None = None,
        details: str | None = None,
        upsert: bool = True,
    ) -> None:
        if status != self.state.status:
            _report(EXTERN_SAGA_STATUS, self.state.saga, status)
        self.state.status = status
        if step is not None:
            self.state.step = step
        self.state.waiting_for = waiting_for
        self._publish(details if details is not None else waiting_for or f"{status}: {self.state.step}", upsert=upsert)

    def complete(self, details: str) -> None:
        """Every forward step is done: the registered compensations will never be needed."""
        for record in self.state.compensations:
            if record.status == "pending":
                record.status = "not_needed"
        self.set_status("completed", details=details)

    # --- forward steps ---

    def add_compensation(
        self,
        step: str,
        activity: str | Callable[..., Any],
        arg: Any,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta = STEP_TIMEOUT,
    ) -> None:
        """Register an activity that undoes `step`. `arg` may be a function: then it is built at unwind time
        (e.g. the failure reason, or an id the forward step returned), from workflow state only. Its retry
        policy: the input's for the service `activity` calls, unless given."""
        if retry_policy is None:
            retry_policy = self.retry_policies.for_compensation(_activity_name(activity))

        async def undo() -> None:
            await self.execute_activity(
                activity, arg() if callable(arg) else arg, start_to_close_timeout=timeout, retry_policy=retry_policy
            )

        self._register(step, undo)

    def _register(self, step: str, undo: Callable[[], Awaitable[Any]]) -> None:
        self._compensations.append(_Compensation(CompensationRecord(step=step), undo))
        self.state.compensations.append(self._compensations[-1].record)

    def not_needed(self, step: str) -> None:
        """`step` turned out to create nothing (e.g. a child that refused its input): never undo it."""
        for comp in [c for c in self._compensations if c.record.step == step]:
            comp.record.status = "not_needed"
            self._compensations.remove(comp)

    async def step(
        self,
        name: str,
        activity: str | Callable[..., Awaitable[T]],
        arg: Any,
        *,
        compensation: tuple[str | Callable[..., Any], Any] | None = None,
        result_type: type | None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: timedelta = STEP_TIMEOUT,
        local: bool = False,
    ) -> T:
        """Run one forward step as an activity; its compensation is registered before it starts. Its retry
        policy: the input's for the service `activity` calls, unless given.

        `local`: a local activity, run by this worker inside the workflow task (no task of its own, no server
        round trip): for a short, idempotent database step, since a worker crash makes the workflow task run
        it again from the start. Its `SagaStep` is not upserted: search attributes change when the workflow task
        completes, and the task goes on past a local step, so only the state it ends in (the next one published)
        is seen. Only a failing local step that backs off long enough for its task to complete on a retry timer
        leaves the earlier `SagaStep` showing meanwhile; the query and the current details name it all along."""
        if retry_policy is None:
            retry_policy = self.retry_policies.for_step(_activity_name(activity))
        self.set_status("running", step=name, details=f"running step {name}", upsert=not local)
        if compensation is not None:
            self.add_compensation(name, compensation[0], compensation[1])
        # `result_type` only applies to an activity named by string; a callable's annotations give its result type
        options: dict[str, Any] = {
            "start_to_close_timeout": timeout,
            "retry_policy": retry_policy,
            # A cancelled workflow waits for the step to end (our activities do not heartbeat, so they finish)
            # before its compensations run: an undo must never overlap the step it undoes.
            "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        if isinstance(activity, str):
            options["result_type"] = result_type
        result: T = await self.execute_activity(activity, arg, local=local, **options)
        self.state.completed_steps.append(name)
        if self.state.pivot is None:
            # A step that finished although the workflow was cancelled meanwhile: the SDK returns its result and
            # drops the cancellation. Unwind now, this step included.
            raise_if_cancel_requested()
        return result

    async def execute_activity(
        self, activity: str | Callable[..., Any], arg: Any, *, local: bool = False, **options: Any
    ) -> Any:
        """Execute an activity (`local`: a local activity); while the service it calls has its circuit open,
        wait on a durable timer until the breaker said to try again (saying so in the details) and run it again."""
        execute = workflow.execute_local_activity if local else workflow.execute_activity
        while True:
            try:
                return await execute(activity, arg, **options)
            except ActivityError as err:
                cause = failure_cause(err)
                if not isinstance(cause, ApplicationError) or cause.type != CIRCUIT_OPEN:
                    raise
            except ApplicationError as err:
                # A local activity's failure can reach the workflow bare: wrapped as an activity's is, callers
                # (EMAIL_TAKEN, the unwind, describe_error) tell failures apart the same way for both kinds.
                if not local:
                    raise
                if err.type != CIRCUIT_OPEN:
                    raise _local_activity_error(activity) from err
                cause = err
            info = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
            delay = timedelta(seconds=max(float(info.get("retry_after_seconds", 1.0)), 0.1))
            status, waiting_for = self.state.status, self.state.waiting_for
            wait = cause.message  # "Stripe circuit open until …", or half-open and when to try again
            self.set_status("waiting", waiting_for=wait, details=f"waiting: {wait}")
            await workflow.sleep(delay)
            self.set_status(status, waiting_for=waiting_for, details=f"{status}: {self.state.step}")

    def step_done(self, name: str) -> None:
        """Record a forward step that is not an activity (e.g. handing a message to a child workflow)."""
        self.state.completed_steps.append(name)

    async def start_child(
        self,
        name: str,
        workflow_type: str,
        arg: Any,
        *,
        compensation: tuple[str | Callable[..., Any], Any] | None = None,
        cancel_on_unwind: bool = False,
        **options: Any,
    ) -> workflow.ChildWorkflowHandle:
        """Start a child workflow as a forward step and return its handle once started; the caller awaits it
        (or not) and calls `step_done`. Its compensation is registered before it starts: an activity
        `(activity, arg)`, or (`cancel_on_unwind`) cancelling the child and waiting for its own unwind.
        `options` are those of `workflow.start_child_workflow` (`id` is required)."""
        handle: workflow.ChildWorkflowHandle | None = None

        async def cancel_child() -> None:
            if handle is not None:  # never started: nothing to undo
                await self._unwind_child(handle)

        if compensation is not None:
            self.add_compensation(name, compensation[0], compensation[1])
        elif cancel_on_unwind:
            self._register(name, cancel_child)
        if isinstance(arg, WithRetryPolicies) and "retry_policies" not in arg.model_fields_set:
            arg = arg.model_copy(update={"retry_policies": self.retry_policies})  # a child saga inherits them
        self.set_status("running", step=name, details=f"starting {workflow_type} {options['id']}")
        handle = await workflow.start_child_workflow(workflow_type, arg, **options)
        return handle

    async def child_step(
        self,
        name: str,
        workflow_type: str,
        arg: Any,
        *,
        compensation: tuple[str | Callable[..., Any], Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run a child workflow to its end as a forward step (see `start_child`); returns its result."""
        handle = await self.start_child(name, workflow_type, arg, compensation=compensation, **options)
        self.set_status("waiting", step=name, waiting_for=f"{workflow_type} {handle.id} to finish")
        result = await handle
        self.state.completed_steps.append(name)
        return result

    async def _unwind_child(self, handle: workflow.ChildWorkflowHandle) -> None:
        """Cancel a child saga and wait until it has unwound itself. Raises (the compensation failed) when it
        was terminated or timed out: its own compensations never ran."""
        self.set_status("compensating", waiting_for=f"child workflow {handle.id} to unwind")
        if not handle.done():
            handle.cancel()
        try:
            await handle
        except ChildWorkflowError as err:
            if isinstance(err.cause, (TerminatedError, TemporalTimeoutError)):
                raise
            # Cancelled, or failed by itself: either way its saga ran its compensations.
        except asyncio.CancelledError:
            pass  # it closed by itself as the cancel was sent (completed, or failed and unwound)

    # --- the pivot ---

    def pivot(self, step: str) -> None:
        """`step` was the point of no return: from here the saga no longer unwinds. The compensations registered
        so far will never run (recorded `not_needed`); what follows must be retried until it succeeds, and is
        the place for what cannot be taken back (emails)."""
        for comp in self._compensations:
            comp.record.status = "not_needed"
        self._compensations.clear()
        self.state.pivot = step

    async def forward(self, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run steps after the pivot to their end: a cancellation meanwhile is not an unwind any more."""
        assert self.state.pivot is not None, "forward() is for the steps after the pivot"
        return await self._shielded(body)

    # --- unwinding ---

    async def run(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run the saga body; on any failure or cancellation compensate, then re-raise the original error.

        Catches BaseException: cancellation while waiting on a timer is asyncio.CancelledError.
        """
        try:
            result = await body()
        except GeneratorExit:
            # The worker is dropping this workflow from memory (evicted, shutting down): not a failure. Nothing
            # may be started here; the saga carries on from its history wherever it is replayed.
            raise
        except BaseException as err:
            self.state.error = describe_error(err)
            await self.compensate("compensated")
            raise
        return result

    async def abort(self, err: BaseException) -> NoReturn:
        """A step failed outside `run`: compensate what was registered, then re-raise the original error."""
        self.state.error = describe_error(err)
        await self.compensate("compensated")
        raise err

    async def reject(self, error: ApplicationError, details: str) -> NoReturn:
        """End before anything was created (e.g. a taken email): nothing to compensate. Waits for update
        handlers, so a caller waiting on an update gets the rejection instead of "workflow completed"."""
        self.state.error = error.type or error.message
        self.set_status("failed", details=details)
        await workflow.wait_condition(workflow.all_handlers_finished)
        raise error

    async def compensate(self, final_status: SagaStatusValue) -> None:
        """Run every registered compensation in reverse; cancellation cannot interrupt it. Past the pivot there
        is nothing left to undo: the saga ends `failed`."""
        if self.state.pivot is not None:
            final_status = "failed"
        await self._shielded(lambda: self._compensate_all(final_status))

    async def _shielded(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `work` to its end even if the workflow is cancelled meanwhile (again)."""
        coro = work()
        try:
            task = asyncio.ensure_future(coro)
        except BaseException:
            coro.close()  # no task could take it (the workflow is being evicted): never leave it un-awaited
            raise
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
        return task.result()

    async def _compensate_all(self, final_status: SagaStatusValue) -> None:
        self.set_status("compensating", details="running compensations in reverse order")
        for comp in reversed(self._compensations):
            await self._compensate_one(comp)
        self.set_status(final_status, step=self.state.step, details=f"{final_status}: compensations finished")

    async def _compensate_one(self, comp: _Compensation) -> None:
        record = comp.record
        while True:
            record.status = "running"
            record.attempts += 1
            try:
                await comp.undo()
            except (ActivityError, ChildWorkflowError) as err:
                record.status = "failed"
                record.error = describe_error(err)
                _report(EXTERN_COMPENSATION_FAILED, self.state.saga, record.step)
                decision = await self._wait_for_operator(record)
                if decision.action == "skip":
                    record.status = "skipped"
                    record.error = f"{record.error} (skipped by operator: {decision.reason or 'no reason given'})"
                    self.set_status("compensating", details="running compensations in reverse order")
                    return
                self.set_status("compensating", details=f"operator asked to retry compensation of {record.step}")
                continue
            record.status = "done"
            record.error = None
            return

    async def _wait_for_operator(self, record: CompensationRecord) -> OperatorDecision:
        self.set_status(
            "awaiting_operator",
            waiting_for=(
                f"operator: compensation of step '{record.step}' failed ({record.error}); "
                f'signal \'{SIGNAL_OPERATOR_DECISION}\' with {{"action": "retry"}} or {{"action": "skip"}}'
            ),
        )
        await workflow.wait_condition(lambda: bool(self._decisions))
        return self._decisions.pop(0)


def _report(name: str, *args: str) -> None:
    """Tell the worker (metrics) what happened, once: never while replaying history."""
    if workflow.unsafe.is_replaying():
        return
    report = workflow.extern_functions().get(name)
    if report is not None:
        report(*args)


def _activity_name(activity: str | Callable[..., Any]) -> str:
    return activity if isinstance(activity, str) else getattr(activity, "__name__", "")


def _local_activity_error(activity: str | Callable[..., Any]) -> ActivityError:
    name = _activity_name(activity) or "local activity"
    return ActivityError(
        f"local activity {name} failed",
        scheduled_event_id=0,  # a local activity has no events of its own (its marker is written on success)
        started_event_id=0,
        identity="",
        activity_type=name,
        activity_id="",
        retry_state=None,
    )


def describe_error(err: BaseException) -> str:
    """A short, log-safe description of a failure: the innermost cause's type and message."""
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    cause: BaseException = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, CancelledError):  # an activity cancelled because the workflow was
        return "cancelled"
    if isinstance(cause, ApplicationError) and cause.type:
        return f"{cause.type}: {cause.message}"
    return f"{type(cause).__name__}: {cause}"

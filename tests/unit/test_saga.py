"""The saga primitive: what happens when the worker drops a suspended saga from memory, and a cancellation that
arrives in the same workflow task as a signal's result."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import warnings
from collections.abc import Generator
from datetime import timedelta

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from models.contracts import SagaState
from models.retry_policies import SagaRetryPolicies
from tests.support.workflows import wait_for_event
from workflows.saga import Saga, wait_until


class _Suspend:
    """Awaits forever: the saga body is parked, as a workflow waiting on a timer or a signal is."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def bare_saga() -> Saga:
    # Saga.__init__ registers workflow handlers, which needs a running workflow; the unwind path does not.
    saga = Saga.__new__(Saga)
    saga.state = SagaState(saga="test")
    saga.retry_policies = SagaRetryPolicies()
    saga._compensations = []
    saga._decisions = []
    return saga


def test_a_saga_closed_by_the_worker_starts_no_unwind_and_leaves_no_coroutine_behind():
    """A workflow evicted from the worker's cache (or a worker shutting down) has its coroutine closed with
    GeneratorExit: that is not a failure, so no compensation may start (it would be a coroutine never awaited,
    and a coroutine that ignores GeneratorExit)."""
    saga = bare_saga()
    saga.add_compensation("step", "undo_step", None)

    async def body() -> None:
        await _Suspend()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = saga.run(body)
        run.send(None)  # suspended inside the body
        run.close()  # raises RuntimeError ("coroutine ignored GeneratorExit") if the saga tried to unwind
        del run
        gc.collect()

    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert saga.state.status != "compensating" and saga.state.error is None
    assert [c.status for c in saga.state.compensations] == ["pending"]


# --- a cancellation the SDK drops ------------------------------------------------------------------------------

_RESOLUTION_MAY_PASS = threading.Event()


@workflow.defn(sandboxed=False)  # unsandboxed: the workflow reads the test's gate
class _TellsThenWaits:
    """A billing cycle in miniature: tells another workflow something, then sleeps a long time."""

    @workflow.run
    async def run(self, target: str) -> str:
        await workflow.get_external_workflow_handle(target).signal("told")
        if not _RESOLUTION_MAY_PASS.is_set():
            # fail this workflow task (the server retries it), as a worker killed while holding it would
            raise RuntimeError("the task that takes the signal's result alone does not complete")
        try:
            await wait_until(lambda: False, timedelta(days=1))
        except asyncio.CancelledError:
            return "unwound"
        return "slept through"


@workflow.defn(sandboxed=False)
class _Listens:
    def __init__(self) -> None:
        self.told = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.told)

    @workflow.signal
    def told_signal(self) -> None:
        self.told = True


async def test_a_cancel_that_arrives_with_a_signals_result_still_unwinds_the_wait(local_env, task_queue):
    """temporalio 1.35 (sdk-python#352) drops a workflow cancellation delivered in the same workflow task as the
    result of a signal to another workflow: the await returns and the cancel is never raised. The chaos run
    met it: a billing cycle told its parent `past_due`, its next task timed out with a killed worker, the
    customer's cancel came in, and the cycle slept on its dunning timer while the cancel waited for it. Here the
    task that resolves the signal fails until the cancel is in history, so one task carries both."""
    client = local_env.client
    _RESOLUTION_MAY_PASS.clear()
    async with Worker(client, task_queue=task_queue, workflows=[_TellsThenWaits, _Listens]):
        listener = await client.start_workflow(_Listens.run, id=f"listens-{uuid.uuid4()}", task_queue=task_queue)
        handle = await client.start_workflow(
            _TellsThenWaits.run, listener.id, id=f"tells-{uuid.uuid4()}", task_queue=task_queue
        )
        await wait_for_event(handle, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
        await handle.cancel()
        await wait_for_event(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
        _RESOLUTION_MAY_PASS.set()
        assert await asyncio.wait_for(handle.result(), 30) == "unwound"
        await listener.terminate()

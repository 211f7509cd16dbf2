"""The saga primitive outside a workflow: what happens when the worker drops a suspended saga from memory."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Generator

from models.contracts import SagaState
from models.retry_policies import SagaRetryPolicies
from workflows.saga import Saga


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

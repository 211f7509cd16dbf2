"""Polling a saga's state and the email worker that unit tests of sagas share."""

from __future__ import annotations

import asyncio

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from models.contracts import SagaState
from models.names import EMAIL_TASK_QUEUE, QUERY_SAGA_STATE
from tests.support.fake_email import FakeEmailDelivery


async def saga_state(handle: WorkflowHandle) -> SagaState:
    return await handle.query(QUERY_SAGA_STATE, result_type=SagaState)


async def wait_for(handle: WorkflowHandle, predicate, timeout: float = 10.0) -> SagaState:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await saga_state(handle)
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"saga never reached the expected state: {state}"
        await asyncio.sleep(0.05)


def email_worker(client: Client) -> Worker:
    return Worker(client, task_queue=EMAIL_TASK_QUEUE, workflows=[FakeEmailDelivery])

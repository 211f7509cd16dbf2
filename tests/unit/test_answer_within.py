"""A saga that cannot confirm in time is a 503 with Retry-After, whichever side's deadline passes first."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from api.problems import WORKFLOW_ENGINE_UNAVAILABLE, Problem
from api.temporal_client import answer_within


async def _never():
    await asyncio.sleep(3600)


async def _server_deadline():
    raise WorkflowUpdateRPCTimeoutOrCancelledError()


@pytest.mark.parametrize("call", [_never, _server_deadline])
async def test_no_confirmation_in_time_is_a_503_to_retry(call):
    with pytest.raises(Problem) as caught:
        await answer_within(call(), timeout=0.05)
    assert caught.value.kind is WORKFLOW_ENGINE_UNAVAILABLE and caught.value.headers == {"Retry-After": "5"}


async def test_an_answer_in_time_is_returned():
    async def answer():
        return 42

    assert await answer_within(answer(), timeout=1) == 42

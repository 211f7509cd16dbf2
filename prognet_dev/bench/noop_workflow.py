"""The baseline for the saga benchmark: a bare workflow running the same number of no-op activities
as the registration saga's forward path (create user, issue token, send email), on the same server."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from temporalio import activity, workflow

NOOP_TASK_QUEUE = "bench-noop"
NOOP_ACTIVITIES = 3


@activity.defn(name="bench.noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchNoop")
class NoopWorkflow:
    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timedelta(seconds=30))
        return steps


async def serve(address: str) -> None:
    """Run the baseline worker in its own process, as the registration worker runs in its own."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    async with Worker(client, task_queue=NOOP_TASK_QUEUE, workflows=[NoopWorkflow], activities=[noop]):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

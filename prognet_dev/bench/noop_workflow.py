"""The saga benchmark's baselines, run by their own worker process on the same server:

- `NoopWorkflow`: the naive bare workflow, one no-op activity per business step (3 for registration and
  emails, 5 for billing);
- `ShapedWorkflow`: the same shape as a real journey (see prognet_dev/bench/shape.py): as many activities,
  local activities, timers and child workflows (each with its own shape) as the real histories hold, and the
  workflows a journey starts from a local activity (`handed_over`), started the same way."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.workflow import ParentClosePolicy

NOOP_TASK_QUEUE = "bench-noop"
NOOP_ACTIVITIES = 3
PENDING_TIMER = timedelta(days=1)  # a timer the journey starts and is not waiting out (a verification window)


@activity.defn(name="bench.noop")
async def noop(step: int) -> int:
    return step


@activity.defn(name="bench.start_shaped")
async def start_shaped(job: dict[str, Any]) -> None:
    """Start a `ShapedWorkflow` through the worker's client (what `activities/email_handoff.py` does)."""
    await activity.client().start_workflow(
        "BenchShaped", job["plan"], id=job["id"], task_queue=activity.info().task_queue
    )


@workflow.defn(name="BenchNoop")
class NoopWorkflow:
    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timedelta(seconds=30))
        return steps


@workflow.defn(name="BenchShaped")
class ShapedWorkflow:
    """Runs `plan` (Shape.plan()): local activities, then activities one after another, then fired timers, then
    starts each child (abandoned, like an email) and leaves the pending timers running. Returns the children's
    ids: the bench waits for them when the journey's figure includes its children's work."""

    @workflow.run
    async def run(self, plan: dict[str, Any]) -> list[str]:
        timeout = timedelta(seconds=30)
        handed_over = plan.get("handed_over", [])
        ids = []
        for step in range(plan["local_activities"] - len(handed_over)):
            await workflow.execute_local_activity(noop, step, start_to_close_timeout=timeout)
        for i, started in enumerate(handed_over):  # the journey's hand-overs are among its local activities
            started_id = f"{workflow.info().workflow_id}-h{i}"
            await workflow.execute_local_activity(
                start_shaped, {"plan": started, "id": started_id}, start_to_close_timeout=timeout
            )
            ids.append(started_id)
        for step in range(plan["activities"]):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timeout)
        for _ in range(plan["timers_fired"]):
            await workflow.sleep(timedelta(milliseconds=1))
        pending = [asyncio.ensure_future(workflow.sleep(PENDING_TIMER)) for _ in range(plan["timers_pending"])]
        for i, child in enumerate(plan["children"]):
            child_id = f"{workflow.info().workflow_id}-c{i}"
            await workflow.start_child_workflow(
                ShapedWorkflow.run, child, id=child_id, parent_close_policy=ParentClosePolicy.ABANDON
            )
            ids.append(child_id)
        del pending  # left running: they go out (TimerStarted) with the completing task, as the journey's do
        return ids


async def serve(address: str) -> None:
    """Run the baseline worker in its own process, as the real worker runs in its own."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    async with Worker(
        client, task_queue=NOOP_TASK_QUEUE, workflows=[NoopWorkflow, ShapedWorkflow], activities=[noop, start_shaped]
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

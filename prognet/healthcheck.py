"""`prognet healthcheck api|worker|relay`: the container healthchecks (exit 0 healthy, 1 not), stdlib + our deps.

api     GET /healthz on this container's port answers 200
worker  this host polls each of its task queues (Temporal lists it among the queue's recent pollers)
relay   a relay leads (someone holds the relay's advisory lock); a standby is healthy while another leads
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Collection

from prognet.settings import Settings

RECENT_POLL_SECONDS = 120  # a long poll lasts up to ~70 s, then the next one starts


def api_healthy(settings: Settings, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.api_port}/healthz", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


async def worker_healthy(settings: Settings, task_queues: Collection[str], host: str | None = None) -> bool:
    """True when a worker on `host` (default: this container) polled every one of `task_queues` lately."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    from models.names import EMAIL_SEND_TASK_QUEUE

    suffix = f"@{host or socket.gethostname()}"  # the SDK's default worker identity is "pid@hostname"
    client = await Client.connect(settings.temporal_target, namespace=settings.temporal_namespace)
    for queue in task_queues:
        kind = (
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
            if queue == EMAIL_SEND_TASK_QUEUE  # activities only: no workflow poller there
            else TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
        )
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            )
        )
        now = time.time()
        if not any(
            p.identity.endswith(suffix) and now - p.last_access_time.ToSeconds() < RECENT_POLL_SECONDS
            for p in answer.pollers
        ):
            return False
    return True


async def relay_healthy(settings: Settings) -> bool:
    import asyncpg

    from relay.relay import LOCK_KEY

    dsn = "postgresql://" + (settings.database_url or "").partition("://")[2]
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        # a bigint advisory key shows in pg_locks as its high and low 32 bits (classid, objid), objsubid 1
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = $1 AND objid = $2 AND objsubid = 1)",
                LOCK_KEY >> 32,
                LOCK_KEY & 0xFFFFFFFF,
            )
        )
    finally:
        await conn.close()


def check(component: str, settings: Settings, task_queues: Collection[str]) -> bool:
    try:
        if component == "api":
            return api_healthy(settings)
        if component == "worker":
            return asyncio.run(asyncio.wait_for(worker_healthy(settings, task_queues), 10))
        return asyncio.run(asyncio.wait_for(relay_healthy(settings), 10))
    except Exception:
        return False

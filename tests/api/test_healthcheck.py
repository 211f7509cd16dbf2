"""`prognet healthcheck worker|relay`, the container healthchecks of docker-compose.yml, on the real services."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from temporalio.client import Client

from models.names import EMAIL_SEND_TASK_QUEUE, EMAIL_TASK_QUEUE, TASK_QUEUE
from prognet.healthcheck import relay_healthy, worker_healthy
from prognet.settings import Settings
from relay.relay import LOCK_KEY
from workers.main import build_workers


async def test_a_worker_is_healthy_while_this_host_polls_each_of_its_task_queues(temporal_settings: Settings):
    every = [TASK_QUEUE, EMAIL_TASK_QUEUE, EMAIL_SEND_TASK_QUEUE]
    for _ in range(100):  # the session's workers register their first polls within moments
        if await worker_healthy(temporal_settings, every):
            break
        await asyncio.sleep(0.1)
    assert await worker_healthy(temporal_settings, every)
    assert not await worker_healthy(temporal_settings, every, host="another-container")
    assert not await worker_healthy(temporal_settings, [TASK_QUEUE, "prognet-nobody-polls-this"])


async def test_a_worker_service_can_serve_a_subset_of_the_task_queues(services, temporal_settings: Settings):
    # a client of its own: the session's workers already serve these queues on the shared client
    client = await Client.connect(services.temporal_address)
    workers = build_workers(client, None, temporal_settings, task_queues=[EMAIL_SEND_TASK_QUEUE])  # type: ignore[arg-type]
    assert [w.task_queue for w in workers.workers] == [EMAIL_SEND_TASK_QUEUE]
    with pytest.raises(ValueError, match="unknown task queues"):
        build_workers(client, None, temporal_settings, task_queues=["prognet-typo"])  # type: ignore[arg-type]


async def test_the_relay_is_healthy_while_a_relay_holds_the_leader_lock(services, settings: Settings):
    leader = await asyncpg.connect(services.postgres_dsn)
    try:
        await leader.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)  # as a leading relay does
        assert await relay_healthy(settings)
    finally:
        await leader.close()

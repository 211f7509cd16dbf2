"""The webhook delivery workflow under the time-skipping server: the retry schedule's exact times, the dead
letter and its retry, disabling a failing endpoint. The attempt is a stand-in (the real one is tested over HTTP in
tests/api/test_webhooks.py)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from models.contracts import (
    WebhookDecision,
    WebhookDeliveryInput,
    WebhookEvent,
)
from models.names import SIGNAL_WEBHOOK_DECISION, webhook_delivery_id, webhook_workflow_id
from tests.support.fake_webhook_activities import SVIX, FakeReceiver
from tests.support.workflows import email_worker, saga_state, wait_for
from workers.main import Workers
from workflows.webhook_delivery import WebhookDeliveryWorkflow


async def start(client: Client, task_queue: str):
    tenant, endpoint, event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    delivery = webhook_delivery_id(endpoint, event)
    req = WebhookDeliveryInput(
        delivery_id=delivery,
        endpoint_id=endpoint,
        tenant_id=tenant,
        event=WebhookEvent(
            id=event,
            type="invoice.paid",
            version=1,
            occurred_at=datetime.now(UTC),
            tenant_id=tenant,
            aggregate_type="invoice",
            aggregate_id=str(uuid.uuid4()),
            payload={"number": 1},
        ),
    )
    return await client.start_workflow(
        WebhookDeliveryWorkflow.run, req, id=webhook_workflow_id(delivery), task_queue=task_queue
    )


def gaps(times: list[datetime]) -> list[int]:
    return [round((b - a).total_seconds()) for a, b in itertools.pairwise(times)]


async def test_500_twice_then_200_is_delivered_on_attempt_3_at_the_schedules_times(ts_client, task_queue):
    receiver = FakeReceiver(codes=[500, 500])
    async with Worker(
        ts_client, task_queue=task_queue, workflows=[WebhookDeliveryWorkflow], activities=receiver.activities()
    ):
        handle = await start(ts_client, task_queue)
        result = await handle.result()
    assert result.status == "delivered" and result.attempts == 3
    assert gaps(receiver.attempts) == [5, 300]  # at once, then after 5 s, then after 5 min
    assert receiver.marks == ["retrying", "retrying"]


async def test_exhaustion_dead_letters_then_a_retry_delivers(time_skipping_env, task_queue):
    client = time_skipping_env.client
    receiver = FakeReceiver(codes=[503] * len(SVIX.schedule_seconds))
    async with Worker(
        client, task_queue=task_queue, workflows=[WebhookDeliveryWorkflow], activities=receiver.activities()
    ):
        handle = await start(client, task_queue)
        for _ in range(10):  # the schedule takes ~27.6 h; skipped in steps (one long skip stalls the test server)
            if receiver.marks[-1:] == ["dead_lettered"]:
                break
            await time_skipping_env.sleep(timedelta(hours=6))
        state = await wait_for(handle, lambda s: s.status == "awaiting_operator")
        assert len(receiver.attempts) == 8
        assert gaps(receiver.attempts) == [5, 300, 1800, 7200, 18000, 36000, 36000]
        assert (
            state.step == "dead_letter" and "HTTP 503" in state.error and SIGNAL_WEBHOOK_DECISION in state.waiting_for
        )
        assert receiver.marks[-1] == "dead_lettered"
        await handle.signal(SIGNAL_WEBHOOK_DECISION, WebhookDecision(action="retry", reason="receiver fixed"))
        result = await handle.result()
        assert (await saga_state(handle)).status == "completed"  # queried while a worker runs
    assert result.status == "delivered" and result.attempts == 9
    assert receiver.marks[-1] == "pending"  # the retry was recorded, then the attempt delivered


async def test_an_endpoint_failing_too_long_is_disabled_its_owners_emailed_and_the_delivery_dead_lettered(
    own_ts_client, task_queue
):
    receiver = FakeReceiver(codes=[500] * 3, disable_after=2)
    hooks = Worker(
        own_ts_client, task_queue=task_queue, workflows=[WebhookDeliveryWorkflow], activities=receiver.activities()
    )
    async with Workers([hooks, email_worker(own_ts_client)]):
        handle = await start(own_ts_client, task_queue)
        state = await wait_for(handle, lambda s: s.status == "awaiting_operator", timeout=20)
        assert len(receiver.attempts) == 2 and len(receiver.disabled) == 1
        assert "disabled" in state.error
        assert any(step.startswith("email_owner_") for step in state.completed_steps)
        await handle.signal(SIGNAL_WEBHOOK_DECISION, WebhookDecision(action="discard"))
        assert (await handle.result()).status == "discarded"

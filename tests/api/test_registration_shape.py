"""What one registration costs Temporal, read from its real history: the journey `prognet bench` measures,
POST /v1/auth/register → verification email in the Maildir."""

from __future__ import annotations

import asyncio
import uuid

from models.names import email_message_id, email_workflow_id
from prognet_dev import read_messages
from prognet_dev.bench.shape import journey_shape
from tests.api.conftest import PASSWORD


async def _wait_for_email(maildir, marker: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(marker in str(m.get("Message-ID", "")) for m in read_messages(maildir)):
        assert asyncio.get_running_loop().time() < deadline, "no verification email"
        await asyncio.sleep(0.1)


async def test_a_registration_takes_one_workflow_task_up_to_its_verification_email(api, temporal_client, services):
    email = f"shape-{uuid.uuid4().hex[:10]}@example.com"
    response = await api.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    wid = response.json()["workflow_id"]
    message_id = email_message_id(wid, "verify")
    await _wait_for_email(services.maildir, str(message_id))

    shape = await journey_shape(temporal_client, wid, handed_over=[email_workflow_id(message_id)])
    # The update-with-start's first task does it all: the pending user, the token and the email's hand-off run
    # as local activities (3 markers), the `accepted` update answers, one upsert says what it waits for, and the
    # verification window's timer starts. No child: no task for its start, none for its end.
    assert shape.workflow_tasks == 1, shape.describe()
    assert (shape.local_activities, shape.activities, shape.upserts, shape.timers_pending) == (3, 0, 1, 1)
    assert shape.child_ids == [] and shape.events == 11, shape.describe()
    # the email's own workflow is counted in the journey all the same
    (delivery,) = shape.handed_over
    assert delivery.workflow_tasks >= 1
    assert shape.journey_events == 11 + delivery.events

"""The hand-off of an email by a saga's local activity: its delivery starts once, however often the step runs."""

from __future__ import annotations

import uuid

from temporalio.testing import ActivityEnvironment

from activities.email_handoff import EmailHandoff
from models.contracts import EmailRequest, StartEmailDelivery
from models.names import SA_TENANT_ID, email_workflow_id
from tests.support.workflows import email_worker


async def test_a_handed_off_email_starts_once_however_often_its_step_runs(own_ts_client):
    client, tenant_id = own_ts_client, str(uuid.uuid4())
    request = EmailRequest(message_id=uuid.uuid4(), template="verify_email", to_user_id=uuid.uuid4())
    start = StartEmailDelivery(request=request, tenant_id=tenant_id, summary="Email verify_email from registration-x")
    env = ActivityEnvironment(client=client)  # the worker's client, as `activity.client()` gives it
    handle = client.get_workflow_handle(email_workflow_id(request.message_id))
    async with email_worker(client):
        await env.run(EmailHandoff().start_delivery, start)
        first = await handle.describe()
        # a worker crash re-runs the local activity with its workflow task: while the delivery runs ...
        await env.run(EmailHandoff().start_delivery, start)
        await handle.result()
        # ... and after it closed, nothing is started again (nothing sent twice)
        await env.run(EmailHandoff().start_delivery, start)
        last = await handle.describe()
    assert last.run_id == first.run_id and last.parent_id is None
    assert last.typed_search_attributes.get(SA_TENANT_ID) == tenant_id
    assert await last.static_summary() == "Email verify_email from registration-x"

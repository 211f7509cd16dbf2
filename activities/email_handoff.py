"""Hand an email to the delivery pipeline from a local activity: start its `EmailDelivery` workflow through the
worker's own Temporal client.

Why not a child workflow: an abandoned child costs its parent two more workflow tasks (one when the child has
started, one when it has closed) and three events, and the parent never waits for it anyway. Started from here,
the message is one marker in the sender's history, inside a workflow task that happens anyway; the delivery keeps
its own workflow (its retries, its dead letter, its operator's decision) all the same.

Idempotent: the workflow id is the message's business key and a closed delivery is never started again
(REJECT_DUPLICATE), so a re-run after a worker crash (a local activity runs again with its workflow task) finds
the delivery it already started and does not send twice.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from models import activity_names as act
from models.contracts import StartEmailDelivery
from models.names import EMAIL_DELIVERY_WORKFLOW, EMAIL_TASK_QUEUE, SA_TENANT_ID, email_workflow_id


class EmailHandoff:
    """`client`: the one to start deliveries with (the worker's, with its tracing); None: the worker's own."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client

    @activity.defn(name=act.START_EMAIL_DELIVERY)
    async def start_delivery(self, req: StartEmailDelivery) -> str:
        """Returns the delivery's workflow id, so the sender's history (the local activity's marker) names it."""
        workflow_id = email_workflow_id(req.request.message_id)
        tenant = [SearchAttributePair(SA_TENANT_ID, req.tenant_id)] if req.tenant_id else []
        try:
            # its codec encrypts the request; its interceptors carry the trace and the retry settings
            await (self.client or activity.client()).start_workflow(
                EMAIL_DELIVERY_WORKFLOW,
                req.request,
                id=workflow_id,
                task_queue=EMAIL_TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(tenant),
                static_summary=req.summary,
            )
        except WorkflowAlreadyStartedError:
            pass  # started by an earlier run of this step: the message is already on its way
        return workflow_id

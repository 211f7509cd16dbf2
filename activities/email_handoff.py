"""Handing an email to the delivery pipeline from a local activity: the `email-{message_id}` workflow is started
through the worker's Temporal client, not as a child.

An abandoned child costs its parent a workflow task to learn it started, and another when it closes while the
parent still runs; started here, the hand-over is one marker in a task the saga takes anyway. The message still
has its own workflow with its own retries and dead letter, found by `TenantId` and by its id (derived from the
sending workflow's id). Starting it again (a retried local activity, a re-run of the saga) is a no-op: an email
workflow with that id that is running or completed is never started a second time; only one that failed or was
terminated may be started again.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from models import activity_names as names
from models.contracts import EmailRequest
from models.names import EMAIL_DELIVERY_WORKFLOW, EMAIL_TASK_QUEUE, SA_TENANT_ID, email_workflow_id


@activity.defn(name=names.START_EMAIL_WORKFLOW)
async def start_email_workflow(request: EmailRequest) -> str:
    """Start the delivery workflow of `request` (it must name its tenant: the `TenantId` the UI filters by).
    Returns its workflow id, so the sending workflow's history (the local activity's marker) names it."""
    workflow_id = email_workflow_id(request.message_id)
    try:
        await activity.client().start_workflow(
            EMAIL_DELIVERY_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=EMAIL_TASK_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SA_TENANT_ID, str(request.tenant_id))] if request.tenant_id else []
            ),
            static_summary=f"Email {request.template} ({request.message_id})",
        )
    except WorkflowAlreadyStartedError:
        pass  # handed over before (a retry, or a re-run of the saga): the message is already on its way
    return workflow_id

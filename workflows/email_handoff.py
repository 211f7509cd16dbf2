"""Hand an email to the delivery pipeline as a local step of the sending saga, not as a child workflow.

The sender starts `EmailDelivery` through a local activity (`activities/email_handoff.py`): one marker inside a
workflow task that happens anyway, where an abandoned child costs the sender two further workflow tasks (the
child started, the child closed) although it never waits for it. The delivery is its own workflow all the same
(`email-{message_id}`: its retries, its dead letter, its operator), carries the sender's `TenantId`, and names
the sender in its summary; starting it twice is a no-op.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import EmailRequest, StartEmailDelivery
    from models.names import SA_TENANT_ID
    from workflows.saga import Saga


async def hand_off_email(saga: Saga, step: str, request: EmailRequest) -> str:
    """Start the delivery of `request` as the saga's local step `step` (nothing to compensate: an email that
    went cannot be taken back, so a saga hands one over only where it may go)."""
    info = workflow.info()
    tenant_id = str(request.tenant_id) if request.tenant_id else info.typed_search_attributes.get(SA_TENANT_ID)
    return await saga.step(
        step,
        act.START_EMAIL_DELIVERY,
        StartEmailDelivery(
            request=request,
            tenant_id=tenant_id,
            summary=f"Email {request.template} ({request.message_id}) from {info.workflow_id}",
        ),
        local=True,  # idempotent: the delivery's id is the message's business key
        result_type=str,  # the delivery's workflow id
    )

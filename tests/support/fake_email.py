"""A stand-in for the EmailDelivery workflow, so sagas under test hand their emails to something.

(The time-skipping server cannot skip time while a child workflow waits for a worker that never comes.)
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.contracts import EmailRequest, EmailResult
    from models.names import EMAIL_DELIVERY_WORKFLOW


@workflow.defn(name=EMAIL_DELIVERY_WORKFLOW)
class FakeEmailDelivery:
    @workflow.run
    async def run(self, req: EmailRequest) -> EmailResult:
        return EmailResult(message_id=req.message_id, state="sent")

"""BillingTrigger: the action of a subscription's Temporal Schedule (`billing-schedule-{subscription_id}`).

A Schedule can only start workflows, so each firing starts this one, which signals `start_cycle` to
`subscription-{id}` and ends. Pausing, triggering or backfilling the Schedule in the UI therefore pauses,
triggers or backfills billing; the subscription never bills a period twice or before it is due. Once the
subscription has ended, the trigger deletes its own Schedule.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.billing_cycle_contracts import BillingTriggerInput, StartCycle
    from models.names import BILLING_TRIGGER_WORKFLOW, SIGNAL_START_CYCLE, subscription_workflow_id


@workflow.defn(name=BILLING_TRIGGER_WORKFLOW)
class BillingTriggerWorkflow:
    @workflow.run
    async def run(self, params: BillingTriggerInput) -> str:
        target = subscription_workflow_id(params.subscription_id)
        try:
            await workflow.get_external_workflow_handle(target).signal(
                SIGNAL_START_CYCLE, StartCycle(requested_by=f"schedule ({workflow.info().workflow_id})")
            )
        except Exception:
            await workflow.execute_activity(
                act.DELETE_BILLING_SCHEDULE, params, start_to_close_timeout=timedelta(seconds=30)
            )
            return f"{target} has ended; its schedule was deleted"
        return f"start_cycle sent to {target}"

"""One Temporal Schedule per subscription (`billing-schedule-{id}`), firing at each period boundary.

Fixed-length plans (the 60-second dev plan, days, weeks) get an interval spec whose offset lines the firings up
with the subscription's anchor. Calendar plans get a calendar spec on the anchor's day and time of day (UTC);
an anchor on the 29th–31st also fires on the last days of shorter months — the subscription holds a firing
that comes before the period end until it is due, so a clamped month end is billed on time.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from models import activity_names as names
from models.billing_calendar import advance
from models.billing_cycle_contracts import BillingScheduleSpec, BillingTriggerInput
from models.names import (
    BILLING_TRIGGER_WORKFLOW,
    SA_SUBSCRIPTION_ID,
    SA_TENANT_ID,
    TASK_QUEUE,
    billing_schedule_id,
)
from models.plans import Plan

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def schedule_spec(plan: Plan, anchor: datetime) -> ScheduleSpec:
    anchor = anchor.astimezone(UTC)
    # The first period starts by itself at the anchor; firings begin with the first period end, so no firing
    # comes early to be held by the subscription (and pausing the Schedule pauses the next charge).
    first_end = advance(anchor, plan, 1)
    period = plan.period()
    if period is not None:
        # rounded up to the second: a firing never comes before the period end (an early one would only be held)
        offset = timedelta(seconds=math.ceil((anchor - EPOCH).total_seconds()) % int(period.total_seconds()))
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=period, offset=offset)], start_at=first_end)
    anchor = (anchor + timedelta(microseconds=999_999)).replace(microsecond=0)  # up to the second, as above
    days = [anchor.day] if anchor.day <= 28 else list(range(28, 32))
    calendar = ScheduleCalendarSpec(
        second=[ScheduleRange(anchor.second)],
        minute=[ScheduleRange(anchor.minute)],
        hour=[ScheduleRange(anchor.hour)],
        day_of_month=[ScheduleRange(d) for d in days],
        month=([ScheduleRange(anchor.month)] if plan.interval == "year" else [ScheduleRange(1, 12)]),
        comment=f"plan {plan.id}: every {plan.interval_count} {plan.interval}(s) from {anchor.isoformat()}",
    )
    return ScheduleSpec(calendars=[calendar], start_at=first_end)


def search_attributes(spec: BillingScheduleSpec) -> TypedSearchAttributes:
    """What the Schedule and each BillingTrigger it starts are found by in the UI."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_TENANT_ID, str(spec.tenant_id)),
            SearchAttributePair(SA_SUBSCRIPTION_ID, str(spec.subscription_id)),
        ]
    )


def billing_schedule(spec: BillingScheduleSpec) -> Schedule:
    sub = spec.subscription_id
    return Schedule(
        action=ScheduleActionStartWorkflow(
            BILLING_TRIGGER_WORKFLOW,
            BillingTriggerInput(subscription_id=sub),
            id=f"billing-trigger-{sub}",
            task_queue=TASK_QUEUE,
            execution_timeout=timedelta(minutes=5),
            typed_search_attributes=search_attributes(spec),
        ),
        spec=schedule_spec(spec.plan, spec.anchor),
        # A missed firing (server down) is caught up once; firings never overlap.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
        state=ScheduleState(note=f"bills subscription {sub} (plan {spec.plan.id}) at each period end"),
    )


class ScheduleActivities:
    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn(name=names.ENSURE_BILLING_SCHEDULE)
    async def ensure_billing_schedule(self, spec: BillingScheduleSpec) -> None:
        """Create the subscription's Schedule; one that exists already (a retry) is left as it is."""
        try:
            await self.client.create_schedule(
                billing_schedule_id(spec.subscription_id),
                billing_schedule(spec),
                search_attributes=search_attributes(spec),
            )
        except ScheduleAlreadyRunningError:
            return
        log.info("billing schedule created", extra={"subscription_id": str(spec.subscription_id)})

    @activity.defn(name=names.DELETE_BILLING_SCHEDULE)
    async def delete_billing_schedule(self, req: BillingTriggerInput) -> None:
        try:
            await self.client.get_schedule_handle(billing_schedule_id(req.subscription_id)).delete()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
        log.info("billing schedule deleted", extra={"subscription_id": str(req.subscription_id)})

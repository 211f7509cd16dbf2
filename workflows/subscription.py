"""A subscription: `subscription-{subscription_id}`, a long-lived state machine over billing cycles.

It owns its row in `subscriptions`: its first step inserts it `incomplete` (the partial unique index allows one
live subscription per tenant; a second one ends here with `SubscriptionExists`, which the `accepted` update
hands to the API's update-with-start), and every status change after that is its own.

trialing (a durable timer of the plan's trial days) → active → past_due (a cycle in dunning) → active again,
or unpaid (the tenant is suspended; the workflow ends) / canceled.

Each period is billed in advance by a `BillingCycle` child (`billing-{subscription_id}-{period_index}`).
Period boundaries come from a calendar anchor and the plan (models/billing_calendar.py), computed from inputs and
`workflow.now()` only.

What starts a cycle: with `cycle_driver="timer"` (implemented, the default) the workflow's own timer at the
period end. With `cycle_driver="schedule"` the workflow waits for the `start_cycle` signal — the action of a
Temporal Schedule per subscription (visible, pausable, triggerable in the UI) — and still never bills a period
before the previous one ended: an early trigger is held until the period end; the first period starts by itself.
Either way the cycle id is the business key, so a duplicate trigger cannot bill twice.

Requests are updates: a validator rejects what cannot apply (the subscription has ended, the plan is the current
one or in another currency) before it reaches history; an accepted request is queued, applied in arrival order by
the main loop, and answered with the state it left. `cancel` {at_period_end} — at the period end no further
cycle starts and the paid period runs out; now → the unused part of each payment of the period is refunded
pro rata. `change_plan` {plan} — an upgrade applies now with a proration charge (a `proration` cycle, no
dunning: declined → the plan stays); a downgrade (or any change while past_due) applies at the period end.
`payment_method` — kept for later cycles and forwarded to an open cycle (an immediate retry).
A period already paid is never cut short except by the customer's own cancel-now, which refunds it.

State lives in one model (`subscription_state` query) that continue-as-new carries.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.billing_calendar import advance, prorate
    from models.billing_cycle_contracts import (
        BillingCycleInput,
        BillingCycleKind,
        BillingCycleResult,
        BillingScheduleSpec,
        BillingTriggerInput,
        CancelSubscription,
        ChangePlan,
        CreateSubscription,
        CycleStatusChanged,
        PaymentMethodUpdated,
        PeriodPayment,
        Refunded,
        RefundPayment,
        SetSubscriptionStatus,
        StartCycle,
        SubscriptionInput,
        SubscriptionResult,
        SubscriptionState,
        SubscriptionStatus,
        SuspendTenant,
    )
    from models.errors import INVALID_PLAN, PLAN_UNCHANGED, SUBSCRIPTION_ENDED, SUBSCRIPTION_EXISTS, error_type
    from models.names import (
        BILLING_CYCLE_WORKFLOW,
        QUERY_SUBSCRIPTION_STATE,
        SA_SUBSCRIPTION_ID,
        SA_TENANT_ID,
        SIGNAL_BILLING_CYCLE_STATUS,
        SIGNAL_PAYMENT_METHOD_UPDATED,
        SIGNAL_START_CYCLE,
        SUBSCRIPTION_WORKFLOW,
        UPDATE_CANCEL_SUBSCRIPTION,
        UPDATE_CHANGE_PLAN,
        UPDATE_PAYMENT_METHOD,
        UPDATE_SUBSCRIPTION_ACCEPTED,
        billing_cycle_workflow_id,
    )
    from models.plans import Plan

ACTIVITY_TIMEOUT = timedelta(seconds=30)
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
MAX_NOTES = 10


@workflow.defn(name=SUBSCRIPTION_WORKFLOW)
class SubscriptionWorkflow:
    @workflow.init
    def __init__(self, params: SubscriptionInput) -> None:
        self.params = params
        self.state = params.state or SubscriptionState(
            subscription_id=params.subscription_id,
            tenant_id=params.tenant_id,
            plan=params.plan,
            payment_method=params.payment_method,
            stripe_customer_id=params.stripe_customer_id,
            notify_user_id=params.notify_user_id,
        )
        self.commands: list[tuple[str, Any]] = []
        self.cycle: workflow.ChildWorkflowHandle | None = None
        self.finals: dict[tuple[str, int], CycleStatusChanged] = {}
        self.start_requested = False
        self.received = self.applied = 0  # requests queued / applied so far: an update waits for its own
        self.created = params.state is not None  # a continue-as-new (or a seeded start) has its row already
        self.rejection: ApplicationError | None = None
        self.ended = False

    @workflow.run
    async def run(self, params: SubscriptionInput) -> SubscriptionResult:
        if not self.created:
            await self._create()
        result = await self._run(params)
        self.ended = True  # requests still queued are answered with the final state; new ones are rejected
        if self.state.schedule_ready:
            # ended (canceled or unpaid): its Schedule goes too, rather than at its next firing
            await workflow.execute_activity(
                act.DELETE_BILLING_SCHEDULE,
                BillingTriggerInput(subscription_id=self.state.subscription_id),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _create(self) -> None:
        s = self.state
        try:
            await workflow.execute_activity(
                act.CREATE_SUBSCRIPTION,
                CreateSubscription(
                    subscription_id=s.subscription_id,
                    tenant_id=s.tenant_id,
                    plan_id=s.plan.id,
                    payment_method=s.payment_method,
                    workflow_id=workflow.info().workflow_id,
                    created_by=s.notify_user_id,
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
        except ActivityError as err:
            if error_type(err) == SUBSCRIPTION_EXISTS:
                self.rejection = ApplicationError(
                    "the tenant already has a live subscription", type=SUBSCRIPTION_EXISTS, non_retryable=True
                )
                await workflow.wait_condition(workflow.all_handlers_finished)
                raise self.rejection from None
            raise
        self.created = True

    async def _run(self, params: SubscriptionInput) -> SubscriptionResult:
        s = self.state
        if s.anchor is None:  # a fresh subscription (not a continue-as-new)
            now = workflow.now()
            if s.plan.trial_days > 0:
                s.trial_end = now + timedelta(days=s.plan.trial_days)
                await self._set_status("trialing")
            s.anchor, s.anchor_index = s.trial_end or now, 0
        if params.cycle_driver == "schedule" and not s.schedule_ready:
            await workflow.execute_activity(
                act.ENSURE_BILLING_SCHEDULE,
                BillingScheduleSpec(
                    subscription_id=s.subscription_id, tenant_id=s.tenant_id, plan=s.plan, anchor=s.anchor
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
            s.schedule_ready = True
        while True:
            due = s.current_period_end or s.trial_end or workflow.now()
            if not await self._wait_until_due(due):
                return self._result()
            if s.cancel_at_period_end:
                s.canceled_at = due
                await self._set_status("canceled")
                return self._result()
            if s.pending_plan is not None:
                self._switch_plan(s.pending_plan, at=due)
            result = await self._bill_period()
            if result is None:  # canceled now while the cycle ran
                return self._result()
            if result.status == "unpaid":
                await self._set_status("unpaid")
                await workflow.execute_activity(
                    act.SUSPEND_TENANT,
                    SuspendTenant(
                        tenant_id=s.tenant_id,
                        subscription_id=s.subscription_id,
                        workflow_id=workflow.info().workflow_id,
                        reason=f"period {s.period_index} unpaid after dunning",
                    ),
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=ACTIVITY_RETRY,
                )
                return self._result()
            if workflow.info().is_continue_as_new_suggested() and not self.commands:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(params.model_copy(update={"state": s}))

    # --- waiting for the period end ---

    async def _wait_until_due(self, due: datetime) -> bool:
        """Until the next period may start (processing requests meanwhile); False when canceled now."""
        s = self.state
        by_schedule = self.params.cycle_driver == "schedule" and s.period_index >= 0
        while True:
            if await self._handle_commands():
                return False
            now = workflow.now()
            if now >= due and (not by_schedule or self.start_requested):
                self.start_requested = False
                return True
            if now < due:
                workflow.set_current_details(f"{s.status}: period {s.period_index} runs until {due.isoformat()}")
            else:
                workflow.set_current_details(
                    f"{s.status}: period {s.period_index + 1} is due; waiting for the "
                    f"schedule's '{SIGNAL_START_CYCLE}' signal"
                )
            try:
                await workflow.wait_condition(lambda: bool(self.commands), timeout=(due - now) if now < due else None)
            except TimeoutError:
                pass

    # --- billing a period ---

    async def _bill_period(self) -> BillingCycleResult | None:
        s = self.state
        k = s.period_index + 1
        assert s.anchor is not None, "_run sets the anchor before the first period"
        start = advance(s.anchor, s.plan, k - s.anchor_index)
        end = advance(s.anchor, s.plan, k - s.anchor_index + 1)
        s.period_index, s.current_period_start, s.current_period_end = k, start, end
        s.period_payments = []
        wid = billing_cycle_workflow_id(s.subscription_id, k)
        while True:
            try:
                result = await self._run_cycle(self._cycle_input("period", s.plan, s.plan.amount, start, end), wid)
            except ChildWorkflowError as err:
                # A step failed and the cycle unwound (any charge refunded). The period is billed again on the
                # next `start_cycle` (the Schedule's next firing, or an operator) or a new payment method.
                s.reruns += 1
                self._note(f"billing cycle {wid} failed ({err.cause or err}); waiting for '{SIGNAL_START_CYCLE}'")
                workflow.set_current_details(
                    f"billing cycle {wid} failed; period {k} is billed again on the "
                    f"next '{SIGNAL_START_CYCLE}' (the schedule, or an operator's signal)"
                )
                self.start_requested = False
                while not self.start_requested:
                    method = s.payment_method
                    await workflow.wait_condition(lambda: bool(self.commands))
                    if await self._handle_commands():
                        return None
                    if s.cancel_at_period_end:  # this period was never paid: it ends now
                        s.canceled_at = workflow.now()
                        await self._set_status("canceled")
                        return None
                    if s.payment_method != method:
                        self.start_requested = True  # a new card: try it at once
                self.start_requested = False
                wid = f"{billing_cycle_workflow_id(s.subscription_id, k)}-rerun-{s.reruns}"
                continue
            if result is None:
                return None
            if result.status == "paid":
                s.paid_through, s.cycles_paid = end, s.cycles_paid + 1
                s.period_payments.append(
                    PeriodPayment(payment_intent_id=result.payment_intent_id, amount=result.amount)
                )
                await self._set_status("active")
            return result

    def _cycle_input(
        self, kind: BillingCycleKind, plan: Plan, amount: int, start: datetime, end: datetime
    ) -> BillingCycleInput:
        s = self.state
        return BillingCycleInput(
            subscription_id=s.subscription_id,
            tenant_id=s.tenant_id,
            plan_id=plan.id,
            amount=amount,
            currency=plan.currency,
            period_index=s.period_index,
            period_start=start,
            period_end=end,
            payment_method=s.payment_method,
            stripe_customer_id=s.stripe_customer_id,
            notify_user_id=s.notify_user_id,
            kind=kind,
            dunning_schedule_days=self.params.dunning_schedule_days if kind == "period" else [],
            poll_interval_seconds=self.params.poll_interval_seconds,
            retry_policies=self.params.retry_policies,  # those recorded when the subscription started
        )

    async def _run_cycle(self, inp: BillingCycleInput, wid: str, *, watch: bool = True) -> BillingCycleResult | None:
        """Run a cycle as a child; while it runs, requests are handled (`watch`). None: canceled now meanwhile."""
        key = (inp.kind, inp.period_index)
        try:
            cycle = await workflow.start_child_workflow(
                BILLING_CYCLE_WORKFLOW,
                inp,
                id=wid,
                result_type=BillingCycleResult,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SA_TENANT_ID, str(inp.tenant_id)),
                        SearchAttributePair(SA_SUBSCRIPTION_ID, str(inp.subscription_id)),
                    ]
                ),
                static_summary=f"Billing {inp.kind} {inp.period_index} of subscription {inp.subscription_id}",
            )
        except WorkflowAlreadyStartedError:
            # Started before (a reset of this workflow): the cycle reports its end by signal.
            self._note(f"{wid} already started; following it by its signals")
            await workflow.wait_condition(lambda: key in self.finals and self.finals[key].status != "past_due")
            final = self.finals[key]
            return BillingCycleResult(
                subscription_id=inp.subscription_id,
                period_index=inp.period_index,
                kind=inp.kind,
                status=final.status,
                amount=final.amount,
                invoice_id="",
                invoice_number=0,
                payment_intent_id=final.payment_intent_id,
                attempts=final.attempt,
            )
        # A request handled meanwhile may run a proration cycle of its own (once this one is done), which
        # replaces `self.cycle`: this loop follows its own cycle.
        self.cycle = cycle
        try:
            while watch and not cycle.done():
                await workflow.wait_condition(lambda: cycle.done() or bool(self.commands))
                if await self._handle_commands():
                    return None
            return await cycle
        finally:
            self.cycle = None

    # --- requests ---

    async def _handle_commands(self) -> bool:
        """Apply queued requests in arrival order; True when the subscription was canceled now."""
        while self.commands:
            kind, req = self.commands.pop(0)
            try:
                if await self._handle(kind, req):
                    return True
            finally:
                self.applied += 1
        return False

    async def _handle(self, kind: str, req: Any) -> bool:
        """Apply one request; True when it canceled the subscription now."""
        s = self.state
        if kind == "cancel":
            if not req.at_period_end:
                await self._cancel_now(req)
                return True
            s.cancel_at_period_end = True
            self._note(f"cancel at period end ({req.reason or 'no reason given'})")
        elif kind == "change_plan":
            await self._change_plan(req.plan)
        elif kind == "payment_method":
            s.payment_method = req.payment_method
            if self.cycle is not None and not self.cycle.done():
                try:
                    await self.cycle.signal(SIGNAL_PAYMENT_METHOD_UPDATED, req)
                except Exception:
                    workflow.logger.info("open cycle closed before the new payment method reached it")
        elif kind == "start_cycle":
            self.start_requested = True
        elif (
            kind == "cycle_status"
            and req.kind == "period"
            and req.period_index == s.period_index
            and req.status == "past_due"
            and s.status != "past_due"
        ):
            await self._set_status("past_due")
        return False

    async def _cancel_now(self, req: CancelSubscription) -> None:
        s, now = self.state, workflow.now()
        if self.cycle is not None and not self.cycle.done():
            self.cycle.cancel()  # the cycle unwinds: invoice voided, anything charged refunded
            try:
                await self.cycle
            except (ChildWorkflowError, asyncio.CancelledError):
                pass
        elif s.period_payments and s.current_period_end and now < s.current_period_end:
            start, end = s.current_period_start, s.current_period_end
            assert start is not None, "a period with payments has started"
            # each payment back for the unused share of the time it paid for: right across an upgrade to a plan
            # of another interval too (the plan's own rate over this period's length is not)
            refund = sum(prorate(p.amount, end - now, end - (p.covers_from or start)) for p in s.period_payments)
            if refund > 0:
                refunded: Refunded = await workflow.execute_activity(
                    act.REFUND_PAYMENT,
                    RefundPayment(
                        idempotency_key=f"{workflow.info().workflow_id}:cancel:{s.period_index}",
                        tenant_id=s.tenant_id,
                        payment_intent_ids=[p.payment_intent_id for p in reversed(s.period_payments)],
                        amount=refund,
                        reason="canceled now: the unused part of the period",
                    ),
                    result_type=Refunded,
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=ACTIVITY_RETRY,
                )
                s.refunded_amount = refunded.amount
        s.canceled_at = now
        self._note(f"canceled now ({req.reason or 'no reason given'})")
        await self._set_status("canceled")

    async def _change_plan(self, plan: Plan) -> None:
        s = self.state
        if plan.id == s.plan.id:
            self._note(f"change to {plan.id} ignored: already on it")
            return
        if s.status == "trialing":
            assert s.anchor is not None, "_run sets the anchor (the trial end) before handling requests"
            self._switch_plan(plan, at=s.anchor)
            await self._set_status("trialing")
            return
        cycle_open = self.cycle is not None and not self.cycle.done()
        if s.status != "active" or cycle_open or s.current_period_start is None:
            s.pending_plan = plan
            self._note(f"change to {plan.id} deferred to the period end (status {s.status})")
            return
        now, start, end = workflow.now(), s.current_period_start, s.current_period_end
        assert end is not None, "a started period has an end"
        length, new_length = end - start, advance(start, plan, 1) - start
        if plan.amount * length <= s.plan.amount * new_length:  # not dearer per unit of time: a downgrade
            s.pending_plan = plan
            self._note(f"downgrade to {plan.id} at the period end {end.isoformat()}")
            return
        s.pending_plan = None
        amount = prorate(plan.amount, end - now, new_length) - prorate(s.plan.amount, end - now, length)
        if amount > 0:
            s.prorations += 1
            result = await self._run_cycle(
                self._cycle_input("proration", plan, amount, now, end),
                billing_cycle_workflow_id(s.subscription_id, s.period_index, "proration", s.prorations),
                watch=False,
            )
            if result is None or result.status != "paid":
                self._note(f"upgrade to {plan.id} not applied: the proration charge of {amount} was declined")
                return
            s.period_payments.append(
                PeriodPayment(payment_intent_id=result.payment_intent_id, amount=amount, covers_from=now)
            )
        s.last_proration_amount, s.plan_changed_at = amount, now
        self._switch_plan(plan, at=end)
        await self._set_status("active")

    def _switch_plan(self, plan: Plan, *, at: datetime) -> None:
        """From the next period on, periods follow `plan`; a different interval re-anchors at `at`."""
        s = self.state
        if (plan.interval, plan.interval_count) != (s.plan.interval, s.plan.interval_count):
            s.anchor, s.anchor_index = at, s.period_index + 1
        s.plan, s.pending_plan = plan, None

    # --- bookkeeping ---

    async def _set_status(self, status: SubscriptionStatus) -> None:
        s = self.state
        s.status = status
        workflow.set_current_details(f"{status}: plan {s.plan.id}, period {s.period_index}")
        await workflow.execute_activity(
            act.SET_SUBSCRIPTION_STATUS,
            SetSubscriptionStatus(
                subscription_id=s.subscription_id,
                tenant_id=s.tenant_id,
                status=status,
                plan_id=s.plan.id,
                current_period_start=s.current_period_start,
                current_period_end=s.current_period_end,
                payment_method=s.payment_method,
                workflow_id=workflow.info().workflow_id,
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
        )

    def _note(self, text: str) -> None:
        self.state.notes = [*self.state.notes, f"{workflow.now().isoformat()} {text}"][-MAX_NOTES:]

    def _result(self) -> SubscriptionResult:
        s = self.state
        return SubscriptionResult(
            subscription_id=s.subscription_id,
            status=s.status,
            cycles_paid=s.cycles_paid,
            refunded_amount=s.refunded_amount,
        )

    # --- handlers: requests only queue; the main loop applies them in order ---

    def _queue(self, kind: str, req: Any) -> int:
        """Queue a request; its ticket is its place in the arrival order."""
        self.commands.append((kind, req))
        self.received += 1
        return self.received

    async def _request(self, kind: str, req: Any) -> SubscriptionState:
        """Queue a request and answer, once the main loop has applied it, with the state it left."""
        ticket = self._queue(kind, req)
        await workflow.wait_condition(lambda: self.applied >= ticket or self.ended)
        return self.state

    def _refuse_if_ended(self) -> None:
        s = self.state
        if self.ended or self.rejection is not None or s.status in ("canceled", "unpaid"):
            raise ApplicationError(
                f"this subscription has ended ({s.status})", type=SUBSCRIPTION_ENDED, non_retryable=True
            )

    @workflow.update(name=UPDATE_SUBSCRIPTION_ACCEPTED)
    async def accepted(self) -> SubscriptionState:
        """Answers once the row exists, so a second live subscription is a synchronous 409 for the API."""
        await workflow.wait_condition(lambda: self.created or self.rejection is not None)
        if self.rejection is not None:
            raise self.rejection
        return self.state

    @workflow.update(name=UPDATE_CANCEL_SUBSCRIPTION)
    async def cancel(self, req: CancelSubscription) -> SubscriptionState:
        return await self._request("cancel", req)

    @cancel.validator
    def validate_cancel(self, req: CancelSubscription) -> None:
        self._refuse_if_ended()

    @workflow.update(name=UPDATE_CHANGE_PLAN)
    async def change_plan(self, req: ChangePlan) -> SubscriptionState:
        return await self._request("change_plan", req)

    @change_plan.validator
    def validate_change_plan(self, req: ChangePlan) -> None:
        self._refuse_if_ended()
        current = self.state.plan
        if req.plan.id == current.id:
            raise ApplicationError(f"already on {current.id}", type=PLAN_UNCHANGED, non_retryable=True)
        if req.plan.currency != current.currency:
            raise ApplicationError(
                f"{req.plan.id} bills in {req.plan.currency}, this subscription in {current.currency}",
                type=INVALID_PLAN,
                non_retryable=True,
            )

    @workflow.update(name=UPDATE_PAYMENT_METHOD)
    async def payment_method(self, req: PaymentMethodUpdated) -> SubscriptionState:
        return await self._request("payment_method", req)

    @payment_method.validator
    def validate_payment_method(self, req: PaymentMethodUpdated) -> None:
        self._refuse_if_ended()

    @workflow.signal(name=SIGNAL_START_CYCLE)
    def start_cycle(self, req: StartCycle) -> None:
        self._queue("start_cycle", req)

    @workflow.signal(name=SIGNAL_BILLING_CYCLE_STATUS)
    def billing_cycle_status(self, req: CycleStatusChanged) -> None:
        self.finals[(req.kind, req.period_index)] = req
        self._queue("cycle_status", req)

    @workflow.query(name=QUERY_SUBSCRIPTION_STATE)
    def subscription_state(self) -> SubscriptionState:
        return self.state

"""One incident: `incident-{rule}-{dedupe key}`, opened (or joined) by signal-with-start of `fire`.

open: level 1 is notified (emails through the EmailDelivery pipeline, webhooks POSTed); not acknowledged within
the level's timeout (a durable timer) → the next level, up to the last, which is then notified again every
`repeat_every`. `acknowledge` stops the escalation; `resolve` (or the condition clear for `clear_after`, told by
the evaluator's `condition_clear`) resolves it. A resolved incident stays open for `reopen_window`: firing again
within it reopens the same incident (level 1 again) instead of opening another; after it the workflow ends.

The search attributes `IncidentSeverity` and `IncidentState` list incidents in the UI and the API.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import EmailRequest
    from models.incidents import (
        Acknowledge,
        Firing,
        IncidentInput,
        IncidentStateValue,
        IncidentView,
        Resolve,
        TimelineEntry,
        TimelineKind,
    )
    from models.names import (
        EMAIL_DELIVERY_WORKFLOW,
        EMAIL_TASK_QUEUE,
        INCIDENT_WORKFLOW,
        QUERY_INCIDENT,
        SA_INCIDENT_STATE,
        SIGNAL_INCIDENT_ACK,
        SIGNAL_INCIDENT_CLEAR,
        SIGNAL_INCIDENT_FIRE,
        SIGNAL_INCIDENT_RESOLVE,
        email_message_id,
        email_workflow_id,
    )

WEBHOOK_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))


@workflow.defn(name=INCIDENT_WORKFLOW)
class IncidentWorkflow:
    def __init__(self) -> None:
        self.view: IncidentView | None = None
        self.pending: list[Firing] = []  # fires not yet seen by the main loop (the first opens the incident)
        self.refired = False  # fired while resolved → reopen
        self.woken = False

    @workflow.run
    async def run(self, inp: IncidentInput) -> IncidentView:
        self.inp = inp
        if inp.carried is None:
            await workflow.wait_condition(lambda: bool(self.pending))  # the start signal, in the first task
            first = self.pending.pop(0)
            self.view = IncidentView(
                id=workflow.info().workflow_id,
                rule=inp.rule,
                severity=inp.severity,
                dedupe_key=inp.dedupe_key,
                summary=inp.summary,
                state="open",
                opened_at=workflow.now(),
                firings=1 + len(self.pending),
                last_value=first.value,
                last_detail=first.detail,
            )
            self._log("fired", f"{first.detail} ({first.source})")
            await self._notify(0, "notified")
        else:
            self.view = inp.carried
        return await self._loop()

    async def _loop(self) -> IncidentView:
        view = self._view
        while True:
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.inp.model_copy(update={"carried": view}))
            now = workflow.now()
            if view.state == "resolved":
                if self.refired:
                    self.refired = False
                    view.firings += 1
                    self._set_state("open")
                    view.acknowledged_by = view.clear_since = view.resolved_at = None
                    self._log("reopened", view.last_detail)
                    await self._notify(0, "notified")
                    continue
                assert view.resolved_at is not None
                remaining = view.resolved_at + timedelta(seconds=self.inp.reopen_window_seconds) - now
                if remaining <= timedelta(0):
                    return view
                await self._sleep(remaining)
                continue
            clear_at = view.clear_since + timedelta(seconds=self.inp.clear_after_seconds) if view.clear_since else None
            if clear_at is not None and now >= clear_at:
                self._resolve("evaluator", f"condition clear for {self.inp.clear_after_seconds:g} s")
                continue
            deadlines = [clear_at] if clear_at else []
            if view.state == "open":
                assert view.next_notification_at is not None
                if now >= view.next_notification_at:
                    if view.level < len(self.inp.levels):
                        await self._notify(view.level, "escalated")
                    else:
                        await self._notify(view.level - 1, "repeated")
                    continue
                deadlines.append(view.next_notification_at)
            await self._sleep(min(deadlines) - now if deadlines else None)

    async def _sleep(self, timeout: timedelta | None) -> None:
        self.woken = False
        try:
            await workflow.wait_condition(lambda: self.woken, timeout=timeout)
        except TimeoutError:
            pass

    async def _notify(self, index: int, kind: TimelineKind) -> None:
        """Level `index` (0-based): emails handed to the delivery pipeline, webhooks POSTed."""
        view = self._view
        level = self.inp.levels[index]
        view.level = index + 1
        wait = timedelta(seconds=self.inp.repeat_every_seconds if kind == "repeated" else level.timeout_seconds)
        now = workflow.now()
        # An escalation or repeat is due at a time: the next one counts from that time, not from when this task
        # happened to run, so small delays do not add up; one missed by a whole interval is not caught up in a burst.
        due = view.next_notification_at if kind in ("escalated", "repeated") else None
        view.next_notification_at = due + wait if due is not None and due + wait > now else now + wait
        view.notifications += 1
        subject = f"[{view.severity.upper()}] {view.rule}: {view.summary}"
        body = (
            f"Incident {view.id} ({view.state}, level {index + 1} of {len(self.inp.levels)}).\n"
            f"{view.summary}\nLast evaluation: {view.last_detail}\n\n"
            f"Acknowledge: POST /v1/admin/incidents/{view.id}/ack (or signal '{SIGNAL_INCIDENT_ACK}' in the UI)."
        )
        for address in level.emails:
            await self._email(address, subject, body, view.notifications)
        self._log(kind, f"level {index + 1}", level=index + 1, to=[*level.emails, *level.webhooks])
        for url in level.webhooks:
            try:
                await workflow.execute_activity(
                    act.POST_INCIDENT_WEBHOOK,
                    args=[url, view],
                    start_to_close_timeout=timedelta(seconds=15),
                    retry_policy=WEBHOOK_RETRY,
                )
            except ActivityError as err:
                self._log("notify_failed", f"webhook: {err.cause or err}", level=index + 1, to=[url])

    async def _email(self, address: str, subject: str, body: str, seq: int) -> None:
        purpose = f"{workflow.info().first_execution_run_id}-notify-{seq}-{address}"
        message_id = email_message_id(workflow.info().workflow_id, purpose)
        try:
            await workflow.start_child_workflow(
                EMAIL_DELIVERY_WORKFLOW,
                EmailRequest(
                    message_id=message_id,
                    template="notice",
                    to_address=address,
                    params={"subject": subject, "body": body},
                ),
                id=email_workflow_id(message_id),
                task_queue=EMAIL_TASK_QUEUE,
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"Incident notification ({self._view.rule})",
            )
        except WorkflowAlreadyStartedError:
            pass

    def _resolve(self, by: str, note: str) -> None:
        view = self._view
        self._set_state("resolved")
        view.resolved_at = workflow.now()
        view.clear_since = view.next_notification_at = None
        self._log("resolved", note, by=by)

    def _set_state(self, state: IncidentStateValue) -> None:
        self._view.state = state
        workflow.upsert_search_attributes([SA_INCIDENT_STATE.value_set(state)])

    def _log(
        self, kind: TimelineKind, detail: str = "", *, level: int | None = None, to: list[str] | None = None, by=None
    ) -> None:
        self._view.timeline.append(
            TimelineEntry(at=workflow.now(), kind=kind, detail=detail, level=level, to=to or [], by=by)
        )

    @property
    def _view(self) -> IncidentView:
        assert self.view is not None
        return self.view

    # --- handlers: they change the state at once; the main loop sends what follows from it ---

    @workflow.signal(name=SIGNAL_INCIDENT_FIRE)
    def fire(self, firing: Firing) -> None:
        self.woken = True
        if self.view is None:
            self.pending.append(firing)
            return
        self.view.last_value, self.view.last_detail = firing.value, firing.detail
        self.view.clear_since = None
        if self.view.state == "resolved":
            self.refired = True
        else:
            self.view.firings += 1

    @workflow.signal(name=SIGNAL_INCIDENT_CLEAR)
    def condition_clear(self) -> None:
        if self.view is not None and self.view.state != "resolved" and self.view.clear_since is None:
            self.view.clear_since = workflow.now()
            self.woken = True

    @workflow.signal(name=SIGNAL_INCIDENT_ACK)
    def acknowledge(self, ack: Acknowledge) -> None:
        if self.view is None or self.view.state != "open":
            return  # acknowledged or resolved already: nothing to stop
        self._set_state("acknowledged")
        self.view.acknowledged_by = ack.by
        self.view.next_notification_at = None
        self._log("acknowledged", ack.note or "", by=ack.by)
        self.woken = True

    @workflow.signal(name=SIGNAL_INCIDENT_RESOLVE)
    def resolve(self, req: Resolve) -> None:
        if self.view is None or self.view.state == "resolved":
            return
        self._resolve(req.by, req.note or "resolved by hand")
        self.woken = True

    @workflow.query(name=QUERY_INCIDENT)
    def current(self) -> IncidentView:
        return self._view  # before the first `fire` is handled: the query fails

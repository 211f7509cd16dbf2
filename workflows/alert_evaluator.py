"""One evaluation of every alert rule: what the Temporal Schedule `alert-evaluator` starts each minute.

collect (each signal's value this minute, appended to its short series; the rules, from the config) → evaluate
(models/alerting.py, pure) → apply: a firing rule signals-with-start its incident (`fire`), a quiet one tells a
running incident `condition_clear`. The rules and series land in history, so a run replays as it ran.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.alerting import ALERTMANAGER, evaluate
    from models.incidents import CollectedSignals, EvaluationReport
    from models.names import ALERT_EVALUATOR_WORKFLOW

# a minute's run that cannot finish within the minute gives way to the next one
STEP_TIMEOUT = timedelta(seconds=20)
STEP_RETRY = RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=5))


@workflow.defn(name=ALERT_EVALUATOR_WORKFLOW)
class AlertEvaluatorWorkflow:
    @workflow.run
    async def run(self) -> EvaluationReport:
        collected: CollectedSignals = await workflow.execute_activity(
            act.COLLECT_ALERT_SIGNALS,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRY,
            result_type=CollectedSignals,
        )
        verdicts = [
            evaluate(rule, [(p.minute, p.value) for p in collected.series.get(rule.signal, [])], collected.minute)
            for rule in collected.rules
            # a source that did not answer neither fires nor clears; Alertmanager's rules are its own
            if rule.signal not in collected.missing and rule.signal != ALERTMANAGER
        ]
        await workflow.execute_activity(
            act.APPLY_ALERT_VERDICTS, verdicts, start_to_close_timeout=STEP_TIMEOUT, retry_policy=STEP_RETRY
        )
        return EvaluationReport(minute=collected.minute, verdicts=verdicts)

"""Replay recorded saga histories: a workflow change that breaks determinism fails here.

Histories are regenerated only on purpose (tests/replay/record.py), never to make this test pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.main import ALL_WORKFLOWS as WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_present():
    assert {p.stem for p in HISTORIES} >= {
        "registration_verified", "registration_expired", "registration_operator_retry",
        "tenant_provisioning_active", "tenant_provisioning_stripe_failed",
        "invitation_accepted", "invitation_expired",
        # recorded after sagas handed their emails to the delivery pipeline (workflow.patched)
        "registration_verified@email_pipeline", "registration_expired@email_pipeline",
        "registration_operator_retry@email_pipeline", "tenant_provisioning_active@email_pipeline",
        "invitation_accepted@email_pipeline",
        # billing: cycles paid, recovered after a new card, unpaid; a schedule-driven subscription canceled now
        "billing_cycle_paid@billing", "billing_cycle_recovered@billing", "billing_cycle_unpaid@billing",
        "subscription_schedule_canceled@billing",
        # the paid sign-up and its registration child (which tells its parent, behind workflow.patched)
        "paid_signup_active@signup", "paid_signup_declined@signup"}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None

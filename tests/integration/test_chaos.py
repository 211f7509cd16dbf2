"""The short form of `make chaos`: 2 API replicas behind the round-robin front and 3 workers take ~40 sagas while a
worker and an API replica are SIGKILLed and Redis is restarted; then nothing is stuck, duplicated, orphaned or lost.

The run and its checks are prognet_dev/chaos.py's (the same code as `make chaos`); this test asserts that each fault
really happened and really met the load, and that the report found nothing wrong.
"""

from __future__ import annotations

import asyncio

from prognet_dev.chaos import DECLINED, PAID, SHORT, run_chaos

# Below pytest's own timeout: a run that hangs shows how far it got (the stack is stopped by the cancellation).
DEADLINE_SECONDS = 240


async def test_the_short_chaos_run_loses_nothing() -> None:
    lines: list[str] = []
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            report = await run_chaos(SHORT, progress=lines.append)
    except TimeoutError:
        raise AssertionError(f"no report after {DEADLINE_SECONDS} s; the run so far:\n" + "\n".join(lines)) from None
    print(report.text())  # pytest -s shows it

    assert not report.problems(), "\n".join([*lines, report.text()])
    for fault in ("SIGKILL API", "SIGKILL Worker", "restart Redis"):
        assert sum(f.startswith(fault) for f in report.faults) == 1, report.faults
    # every kind of saga ran, through both replicas, both card outcomes and the +fail421 addresses included
    accepted = report.accepted
    assert accepted.count() >= SHORT.sagas
    assert accepted.registrations and accepted.tenants and accepted.invitations
    assert {pm for _, pm in accepted.subscriptions.values()} == {PAID, DECLINED}
    assert any("+fail421" in address for address in accepted.registrations)
    assert len(report.per_replica) == 2 and min(report.per_replica.values()) > 0, report.per_replica
    # the checks looked at real data: sagas in Temporal, some closed and some waiting on purpose
    assert report.workflows[("TenantProvisioning", "COMPLETED")] >= len(accepted.tenants)
    assert report.workflows[("Registration", "RUNNING")] > 0  # left waiting for their verification
    assert all(not found for found in report.duplicates.values()) and len(report.duplicates) == 5

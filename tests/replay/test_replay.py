"""Replay recorded saga histories: a workflow change that breaks determinism fails here.

`histories/` holds one generation, today's, recorded by tests/replay/record.py (see its docstring and the
README's versioning policy); histories of released generations, kept in subfolders, are replayed too.
Histories are regenerated only on purpose, never to make this test pass after a release.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.replay.record import RECORDED, REPLAY_CONVERTER
from workers.main import ALL_WORKFLOWS as WORKFLOWS

FOLDER = Path(__file__).parent / "histories"
HISTORIES = sorted(FOLDER.rglob("*.json"))


def test_the_recorded_set_is_exactly_what_record_py_records():
    assert {p.stem for p in FOLDER.glob("*.json")} == RECORDED


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: str(p.relative_to(FOLDER).with_suffix("")))
async def test_recorded_history_replays(path: Path):
    # the stem is the recorded workflow id: child workflow ids are derived from it
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=REPLAY_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None

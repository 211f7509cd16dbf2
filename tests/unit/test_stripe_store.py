"""The Stripe sandbox's state file: snapshot plus journal, what a crash leaves, and the cost per request."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from prognet_dev.stripe_sandbox import store as store_module
from prognet_dev.stripe_sandbox.store import StateStore


def customer(store: StateStore, name: str) -> dict:
    return store.put("customer", "acct_a", {"id": store.new_id("cus"), "name": name})


def test_changes_flushed_without_a_close_survive_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = StateStore(path)
    kept = customer(first, "kept")
    gone = customer(first, "gone")
    first.idempotency_put("acct_a", "k1", {"status": 200})
    first.flush()
    first.remove("customer", gone["id"])
    kept["name"] = "renamed in place"
    first.touch("customer", kept["id"])
    first.flush()
    # no close(): the process died; the journal holds every flushed change
    assert first.journal_path is not None and first.journal_path.exists()

    second = StateStore(path)
    assert second.get("customer", "acct_a", kept["id"]) == {"id": kept["id"], "name": "renamed in place"}
    assert second.get("customer", "acct_a", gone["id"]) is None
    assert second.idempotency_get("acct_a", "k1")["status"] == 200
    # ids keep their creation order after a reload
    newer = customer(second, "newer")
    assert [c["id"] for c in second.list("customer")] == [newer["id"], kept["id"]]


def test_a_torn_last_journal_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = StateStore(path)
    kept = customer(first, "kept")
    first.flush()
    assert first.journal_path is not None
    with open(first.journal_path, "a") as fh:
        fh.write('{"kind":"customer","id":"cus_torn","rec')  # the crash came mid-append
    second = StateStore(path)
    assert [c["id"] for c in second.list("customer")] == [kept["id"]]


def test_close_leaves_one_snapshot_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = StateStore(path)
    kept = customer(first, "kept")
    first.flush()
    first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert kept["id"] in json.loads(path.read_text())["objects"]["customer"]
    assert StateStore(path).get("customer", "acct_a", kept["id"]) == kept


def test_a_flush_writes_what_changed_not_the_whole_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "JOURNAL_MIN_LINES", 100)
    path = tmp_path / "state.json"
    store = StateStore(path)
    assert store.journal_path is not None
    sizes = []
    for i in range(400):
        customer(store, f"customer {i}")
        store.flush()
        if store.journal_path.exists():
            sizes.append(store.journal_path.stat().st_size)
    # each flush appended a few lines; the journal was folded into the snapshot once it outgrew the state
    growth = [b - a for a, b in itertools.pairwise(sizes) if b > a]
    assert growth and max(growth) < 500
    assert path.exists() and len(json.loads(path.read_text())["objects"]["customer"]) >= 100
    assert len(StateStore(path).list("customer")) == 400

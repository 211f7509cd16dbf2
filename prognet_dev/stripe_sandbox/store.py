"""The sandbox's state: every Stripe object by kind, scoped to the account its API key belongs to, plus the
idempotency records. In memory, or persisted, so a second `prognet dev` run still knows the customers created
before: a snapshot (one JSON file, replaced atomically) plus a journal beside it (`….journal`, one JSON line per
object changed, appended and fsynced after each request). Rewriting the whole state after every request cost
O(objects) per request (a 10,000-subscription bench spent 85 % of its time there); the journal is folded into
the snapshot once it outgrows the state, and on close.

Resources use only `new_id`, `put`, `get`, `list`: a new resource kind (payment_intent, refund, event) needs no
change here.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
FORMAT_VERSION = 1
JOURNAL_MIN_LINES = 1000
PRUNE_INTERVAL_SECONDS = 60.0  # below this the journal is never folded into the snapshot


def random_id(prefix: str, length: int = 14) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


class StateStore:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.journal_path = self.path.with_name(self.path.name + ".journal") if self.path is not None else None
        self._lock = threading.RLock()
        self._changed: set[tuple[str, str]] = set()  # (kind, id) put or removed since the last flush
        self._changed_keys: set[str] = set()  # idempotency records stored or pruned since the last flush
        self._rewrite = False  # the next flush writes a snapshot (after a reset)
        self._journal_lines = 0
        self._next_prune = 0.0
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}  # kind -> id -> {"account", "seq", "object"}
        self._idempotency: dict[str, dict[str, Any]] = {}  # "account key" -> record
        self._seq = 0
        if self.path is not None:
            self._load()

    # --- objects --------------------------------------------------------------------------------------------
    def new_id(self, prefix: str, length: int = 14) -> str:
        return random_id(prefix, length)

    def put(self, kind: str, account: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace `obj` (keyed by obj["id"]); insertion order is kept for listing."""
        with self._lock:
            records = self._objects.setdefault(kind, {})
            existing = records.get(obj["id"])
            if existing is None:
                self._seq += 1
                records[obj["id"]] = {"account": account, "seq": self._seq, "object": obj}
            else:
                existing["object"] = obj
            self._changed.add((kind, obj["id"]))
            return obj

    def get(self, kind: str, account: str, object_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._objects.get(kind, {}).get(object_id)
            if record is None or record["account"] != account:
                return None
            return record["object"]

    def account_of(self, kind: str, object_id: str) -> str | None:
        """The account an object belongs to (sandbox admin routes act without an API key)."""
        with self._lock:
            record = self._objects.get(kind, {}).get(object_id)
            return None if record is None else record["account"]

    def list(self, kind: str, account: str | None = None) -> list[dict[str, Any]]:
        """Objects of `kind` (for one account, or all), newest first as Stripe lists them."""
        with self._lock:
            records = [r for r in self._objects.get(kind, {}).values() if account is None or r["account"] == account]
        records.sort(key=lambda r: r["seq"], reverse=True)
        return [r["object"] for r in records]

    def touch(self, kind: str, object_id: str) -> None:
        """Note that an object was changed in place (written at the next flush)."""
        with self._lock:
            self._changed.add((kind, object_id))

    def remove(self, kind: str, object_id: str) -> None:
        with self._lock:
            if self._objects.get(kind, {}).pop(object_id, None) is not None:
                self._changed.add((kind, object_id))

    def trim(self, kind: str, keep: int) -> None:
        """Drop the oldest objects of `kind` beyond the newest `keep` (events, request-like records). Only once a
        tenth more have piled up: sorting them on every call made each new event cost O(keep)."""
        with self._lock:
            records = self._objects.get(kind, {})
            if len(records) <= keep + keep // 10:
                return
            for object_id, _ in sorted(records.items(), key=lambda item: item[1]["seq"])[: len(records) - keep]:
                del records[object_id]
                self._changed.add((kind, object_id))

    # --- idempotency records --------------------------------------------------------------------------------
    def idempotency_get(self, account: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._idempotency.get(f"{account} {key}")

    def idempotency_put(self, account: str, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._idempotency[f"{account} {key}"] = {**record, "stored_at": time.time()}
            self._changed_keys.add(f"{account} {key}")

    def idempotency_prune(self, max_age_seconds: float) -> None:
        """Forget records older than `max_age_seconds`; looks at most once a minute (each look reads them all)."""
        now = time.time()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL_SECONDS
        cutoff = now - max_age_seconds
        with self._lock:
            stale = [k for k, r in self._idempotency.items() if r.get("stored_at", 0) < cutoff]
            for k in stale:
                del self._idempotency[k]
            self._changed_keys.update(stale)

    # --- persistence ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._objects.clear()
            self._idempotency.clear()
            self._rewrite = True
        self.flush()

    def flush(self) -> None:
        """Make the changes since the last flush durable: appended to the journal, or, when the journal has grown
        past the state itself (or after a reset), a new snapshot."""
        with self._lock:
            if not self._dirty() or self.path is None:
                self._forget_changes()
                return
            objects = sum(len(records) for records in self._objects.values()) + len(self._idempotency)
            if self._rewrite or self._journal_lines + len(self._changed) > max(JOURNAL_MIN_LINES, objects):
                self._write_snapshot()
            else:
                self._append_journal()
            self._forget_changes()

    def close(self) -> None:
        """Fold everything into the snapshot (what a stopped sandbox leaves behind: one file)."""
        with self._lock:
            if self.path is None:
                return
            if self._dirty() or (self.journal_path is not None and self.journal_path.exists()):
                self._write_snapshot()
            self._forget_changes()

    def _dirty(self) -> bool:
        """Something changed since the last flush."""
        return bool(self._changed or self._changed_keys or self._rewrite)

    def _forget_changes(self) -> None:
        self._changed.clear()
        self._changed_keys.clear()
        self._rewrite = False

    def _append_journal(self) -> None:
        assert self.journal_path is not None
        lines: list[dict[str, Any]] = []
        for kind, object_id in sorted(self._changed):
            record = self._objects.get(kind, {}).get(object_id)
            lines.append({"kind": kind, "id": object_id, "record": record})
        for key in sorted(self._changed_keys):
            lines.append({"idempotency": key, "record": self._idempotency.get(key)})
        lines.append({"seq": self._seq})
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal_path, "a") as fh:
            fh.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        self._journal_lines += len(lines)

    def _write_snapshot(self) -> None:
        """A temp file in the same directory, fsync, rename over the old snapshot; then the journal is dropped
        (a crash in between replays it over the new snapshot: its lines hold whole records, so that is harmless)."""
        assert self.path is not None and self.journal_path is not None
        payload = json.dumps(
            {"version": FORMAT_VERSION, "seq": self._seq, "objects": self._objects, "idempotency": self._idempotency},
            separators=(",", ":"),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.journal_path.unlink(missing_ok=True)
        self._journal_lines = 0

    def _load(self) -> None:
        assert self.path is not None and self.journal_path is not None
        if self.path.exists():
            data = json.loads(self.path.read_text() or "{}")
            if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
                raise ValueError(f"{self.path}: unsupported Stripe sandbox state version {data.get('version')}")
            self._objects = data.get("objects", {})
            self._idempotency = data.get("idempotency", {})
            self._seq = int(data.get("seq", 0))
        if not self.journal_path.exists():
            return
        for raw in self.journal_path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                break  # the last append was cut short by a crash: that request was never answered
            self._journal_lines += 1
            if "seq" in line:
                self._seq = max(self._seq, int(line["seq"]))
            elif "idempotency" in line:
                if line["record"] is None:
                    self._idempotency.pop(line["idempotency"], None)
                else:
                    self._idempotency[line["idempotency"]] = line["record"]
            elif line["record"] is None:
                self._objects.get(line["kind"], {}).pop(line["id"], None)
            else:
                self._objects.setdefault(line["kind"], {})[line["id"]] = line["record"]

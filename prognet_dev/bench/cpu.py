"""CPU seconds used by the bench process and every process it started (the embedded stack), by role, read from
/proc (Linux). The logins section reports them per login: where a login's CPU goes beyond argon2."""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")
_ROLES = ("api", "consume", "relay", "worker", "webhooks-dispatcher", "temporal", "postgres", "redis")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        text = (_PROC / pid / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def _role(pid: str) -> str:
    try:
        argv = (_PROC / pid / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    words = [a.decode(errors="replace") for a in argv if a]
    for role in _ROLES:
        if any(role == w or w.endswith("/" + role) or w.startswith(role + "-server") for w in words):
            return role
    if any("redis" in w for w in words[:1]):
        return "redis"
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process ("bench client") and its descendants, summed by role."""
    if not _PROC.is_dir():
        return {}
    me = str(os.getpid())
    stats = {p.name: s for p in _PROC.iterdir() if p.name.isdigit() and (s := _stat(p.name)) is not None}
    children: dict[str, list[str]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(str(ppid), []).append(pid)
    totals: dict[str, float] = {}
    todo = [me]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        role = "bench client" if pid == me else _role(pid)
        totals[role] = totals.get(role, 0.0) + stats[pid][1]
    return totals


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work, by role, between two `cpu_by_role()` readings."""
    return {
        role: round((after[role] - before.get(role, 0.0)) * 1000 / units, 1)
        for role in sorted(after, key=lambda r: before.get(r, 0.0) - after[r])
        if after[role] > before.get(role, 0.0)
    }

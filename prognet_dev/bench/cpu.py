"""CPU seconds used by the bench process and every process it started (the embedded stack), by role, read from
/proc (Linux), and what they say about a measured phase: CPU per journey by process, the share of the machine the
phase used (CPU seconds / (wall seconds × cores)) and the rate the cores could reach if CPU were the only limit.

A process's role comes from its command line (`prognet api`, the `temporal` binary, ...); a process with no role of
its own takes its parent's (PostgreSQL's backends are the postmaster's children, `postgres: user db ...`). A process
that exited during the phase is still counted: its parent collected its CPU (the kernel's cutime/cstime) when it
reaped it, and the parent's role is the same for every child that matters (a backend under the postmaster).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from prognet.passwords import usable_cores

_PROC = Path("/proc")
CLIENT = "bench client"  # this process: HTTP and Temporal clients, Maildir polling
PROFILER = "profiler"  # py-spy (`--profile`): shown, but not part of a journey's total
ROUND_TRIPS = "round trips"  # the logins section's bare round trips (roundtrip.py): measuring, not measured
NOT_COUNTED = (PROFILER, ROUND_TRIPS)
OTHER = "other"  # a child of this process whose role is unknown
QUIET_CORES = 0.1  # the embedded stack at rest (pollers, schedules, consumers blocking on Redis): 0.01-0.03
# `prognet <subcommand>` (or `python -m prognet.cli <subcommand>`) → role
_APP_ROLES = {
    "api": "api",
    "worker": "worker",
    "consume": "consume",
    "relay": "relay",
    "webhooks-dispatcher": "webhooks-dispatcher",
    "smtp-sink": "smtp-sink",
    "stripe-sandbox": "stripe-sandbox",
}


def role_of(argv: list[str]) -> str | None:
    """The role of a process run as `argv`, or None (it takes its parent's)."""
    if not argv:
        return None
    program = argv[0].rsplit("/", 1)[-1]
    if program == "temporal":
        return "temporal"
    if program == "postgres" or program.startswith("postgres:"):
        return "postgres"
    if program.startswith("redis-server"):
        return "redis"
    if program == "py-spy":
        return PROFILER
    if len(argv) > 1 and argv[1].endswith("prognet_dev/bench/roundtrip.py"):
        return ROUND_TRIPS  # its pinging client and answering process (a few µs of CPU per round trip)
    if "prognet_dev.bench.noop_workflow" in argv:
        return "noop-worker"  # the bare workflows' worker (the baselines' activities)
    for i, word in enumerate(argv):
        if word == "prognet.cli" or (i == 0 and program == "prognet"):
            return _APP_ROLES.get(argv[i + 1] if i + 1 < len(argv) else "")
    return None


@dataclass
class ProcSample:
    ppid: int
    cpu: float  # user + system seconds of the process itself (all its threads)
    reaped_children_cpu: float  # of its children that exited and were waited for
    argv: list[str]


def _sample(pid: int, ticks: int) -> ProcSample | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
        argv = [a.decode(errors="replace") for a in (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:  # gone meanwhile
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcSample(int(fields[1]), (utime + stime) / ticks, (cutime + cstime) / ticks, argv)


def attribute(samples: dict[int, ProcSample], root: int) -> dict[str, float]:
    """CPU seconds of `root` and its descendants, summed by role. The root's reaped children are not added: they
    are the stack's own processes, which would then count as the client's when the stack restarts one."""
    children: dict[int, list[int]] = {}
    for pid, s in samples.items():
        children.setdefault(s.ppid, []).append(pid)
    totals: dict[str, float] = {}
    if root not in samples:
        return totals
    todo = [(root, CLIENT)]
    while todo:
        pid, inherited = todo.pop()
        s = samples[pid]
        role = CLIENT if pid == root else role_of(s.argv) or inherited
        totals[role] = totals.get(role, 0.0) + s.cpu + (0.0 if pid == root else s.reaped_children_cpu)
        # a child of the bench with no role of its own is not the client's
        todo.extend((child, OTHER if pid == root else role) for child in children.get(pid, []))
    return totals


def main_thread_cpu(pid: int) -> float | None:
    """CPU seconds so far of a process's main thread (the API's event loop: its hashing runs on other threads),
    or None when the process is gone."""
    try:
        text = (_PROC / str(pid) / "task" / str(pid) / "stat").read_text()
    except OSError:
        return None
    utime, stime = (int(x) for x in text[text.rindex(")") + 2 :].split()[11:13])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process ("bench client") and its descendants, summed by role."""
    if not _PROC.is_dir():
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    samples = {int(p.name): s for p in _PROC.iterdir() if p.name.isdigit() and (s := _sample(int(p.name), ticks))}
    return attribute(samples, os.getpid())


def stack_cpu() -> float:
    """CPU seconds so far of the processes the bench started (the bench client and the profiler left out)."""
    return sum(seconds for role, seconds in cpu_by_role().items() if role != CLIENT and role not in NOT_COUNTED)


async def settle(quiet_cores: float = QUIET_CORES, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until the stack is quiet: its processes used less than `quiet_cores` of a core over the last `window`
    seconds (or `timeout` passed). A phase started before then shares the cores with the last one's tail (a
    journey's events still being projected, emails still closing) and its figures carry that work. Returns the
    seconds waited."""
    start = time.perf_counter()
    before = stack_cpu()
    while True:
        await asyncio.sleep(window)
        after = stack_cpu()
        if after - before < quiet_cores * window or time.perf_counter() - start > timeout:
            return time.perf_counter() - start
        before = after


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work, by role (most first), between two `cpu_by_role()` readings."""
    return {
        role: round((after[role] - before.get(role, 0.0)) * 1000 / units, 1)
        for role in sorted(after, key=lambda r: before.get(r, 0.0) - after[r])
        if after[role] > before.get(role, 0.0)
    }


def machine_times() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine so far, all cores, in clock ticks (/proc/stat); None if unknown.
    Busy is everything but idle and I/O wait: other work on a shared machine shows here, not in `cpu_by_role`."""
    try:
        fields = [float(x) for x in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])  # guest time is already inside user time
    return total - idle, total


def busy_share(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The share of the machine's CPU time that was busy between two `machine_times()` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def cores() -> int:
    """The cores this process may run on (its affinity), which its children inherit."""
    return usable_cores()


@dataclass
class CpuPhase:
    """One measured phase: `units` journeys (or sends, logins) in `wall_s` seconds on `cores` cores."""

    units: int
    wall_s: float
    cores: int
    ms_per_unit: dict[str, float]  # by role, most first
    machine_busy: float | None = None  # the whole machine's busy share over the phase, ours and others' work

    @property
    def total_ms(self) -> float:
        """Every role's CPU but the measuring instruments': what the journey itself costs."""
        return round(sum(ms for role, ms in self.ms_per_unit.items() if role not in NOT_COUNTED), 1)

    @property
    def utilisation(self) -> float:
        """CPU seconds used / (wall seconds × cores): near 1, the phase was CPU-bound."""
        return (self.total_ms * self.units / 1000) / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    @property
    def ceiling_rate(self) -> float:
        """Units per second the cores would allow if CPU were the only limit: cores / CPU seconds per unit."""
        return self.cores * 1000 / self.total_ms if self.total_ms > 0 else float("inf")

    def figures(self) -> dict[str, object]:
        return {
            "ms_by_role": self.ms_per_unit,
            "total_ms": self.total_ms,
            "units": self.units,
            "wall_s": round(self.wall_s, 3),
            "cores": self.cores,
            "cpu_s": round(self.total_ms * self.units / 1000, 3),
            "utilisation": round(self.utilisation, 3),
            "ceiling_rate": _finite(self.ceiling_rate),
            "machine_busy": None if self.machine_busy is None else round(self.machine_busy, 3),
        }

    def line(self, label: str, unit: str = "journey") -> str:
        roles = ", ".join(f"{role} {ms:.1f}" for role, ms in self.ms_per_unit.items() if role not in NOT_COUNTED)
        instruments = [f"{role} {self.ms_per_unit[role]:.1f}" for role in NOT_COUNTED if role in self.ms_per_unit]
        if instruments:
            roles += "; not counted: " + ", ".join(instruments)
        machine = "" if self.machine_busy is None else f", machine {self.machine_busy:.0%} busy"
        return (
            f"   CPU/{unit} {label:<10}: {self.total_ms:7.1f} ms ({roles}); "
            f"{self.wall_s:.1f} s x {self.cores} cores, {self.utilisation:.0%} used by these{machine}"
        )


@dataclass
class CpuMeter:
    """`with CpuMeter(n) as m: <run n journeys>`, then `m.phase`: CPU per journey over the block."""

    units: int
    _phase: CpuPhase | None = None
    _before: dict[str, float] = field(default_factory=dict)
    _machine: tuple[float, float] | None = None
    _start: float = 0.0

    @property
    def phase(self) -> CpuPhase:
        if self._phase is None:
            raise RuntimeError("the CpuMeter block has not ended")
        return self._phase

    def __enter__(self) -> CpuMeter:
        self._before, self._machine, self._start = cpu_by_role(), machine_times(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start
        by_role = per_unit_ms(self._before, cpu_by_role(), self.units)
        self._phase = CpuPhase(self.units, wall, cores(), by_role, busy_share(self._machine, machine_times()))


def _finite(value: float, digits: int = 2) -> float | None:
    """JSON has no infinity: a phase that used no measurable CPU has no ceiling (None)."""
    return round(value, digits) if value != float("inf") else None


def cpu_ms_per_journey(phase: CpuPhase) -> dict[str, float]:
    """The JSON figure: ms of CPU per journey by role, and their `total`."""
    return {**phase.ms_per_unit, "total": phase.total_ms}


# Processes that are not ProgNetwork's code: what a journey makes them spend is work any implementation of it does.
NOT_OURS = ("postgres", "redis", "smtp-sink", "stripe-sandbox")


@dataclass
class CpuFloor:
    """The least CPU a journey can cost here if every process of ours (API, worker, consumers, relay, dispatcher)
    cost nothing beyond a bare workflow's: the same-shape bare workflow (the Temporal server and a worker that
    does nothing, for the journey's shape), plus what the journey makes PostgreSQL, Redis, the SMTP sink and the
    Stripe sandbox spend, plus work the journey cannot skip (a registration's argon2 hash). A target whose
    budget is below it is out of reach on this machine for a journey of that shape."""

    parts: dict[str, float]  # e.g. {"same-shape bare workflow": 150.0, "argon2 hash": 220.0, "postgres": 9.0}

    @property
    def ms(self) -> float:
        return sum(self.parts.values())

    @staticmethod
    def of(journey: CpuPhase, same_shape: CpuPhase | None, intrinsic: dict[str, float]) -> CpuFloor:
        parts = {"same-shape bare workflow": same_shape.total_ms} if same_shape is not None else {}
        parts |= intrinsic
        parts |= {role: journey.ms_per_unit[role] for role in NOT_OURS if journey.ms_per_unit.get(role)}
        return CpuFloor({k: round(v, 1) for k, v in parts.items()})


@dataclass
class CpuBudget:
    """What a ratio target asks of a journey's CPU if both sides were CPU-bound: with the baseline costing b ms per
    journey, ratio r needs the journey to cost at most b / r ms."""

    target: str  # e.g. "naive_ratio >= 0.5"
    target_ratio: float
    baseline: CpuPhase
    journey: CpuPhase
    floor: CpuFloor | None = None

    @property
    def out_of_reach(self) -> bool:
        """Even the journey's floor costs more than the target allows."""
        return self.floor is not None and self.floor.ms > self.budget_ms

    @property
    def budget_ms(self) -> float:
        return self.baseline.total_ms / self.target_ratio

    @property
    def cpu_bound_ratio(self) -> float:
        """The ratio the two costs give when CPU is the only limit: baseline CPU / journey CPU."""
        return self.baseline.total_ms / self.journey.total_ms if self.journey.total_ms > 0 else float("inf")

    @property
    def within(self) -> bool:
        return self.journey.total_ms <= self.budget_ms

    def excess_by_role(self, top: int = 4) -> dict[str, float]:
        """Where the journey spends more than the baseline: ms per journey by role, most first."""
        baseline, journey = self.baseline.ms_per_unit, self.journey.ms_per_unit
        extra = {
            role: round(ms - baseline.get(role, 0.0), 1) for role, ms in journey.items() if role not in NOT_COUNTED
        }
        return dict(sorted(((r, ms) for r, ms in extra.items() if ms > 0), key=lambda x: -x[1])[:top])

    def figures(self) -> dict[str, object]:
        return {
            "target": self.target,
            "baseline_cpu_ms": self.baseline.total_ms,
            "journey_cpu_ms": self.journey.total_ms,
            "budget_cpu_ms": round(self.budget_ms, 1),
            "cpu_bound_ratio": _finite(self.cpu_bound_ratio, 3),
            "within_budget": self.within,
            "excess_ms_by_role": self.excess_by_role(),
            "floor_cpu_ms": round(self.floor.ms, 1) if self.floor else None,
            "floor_parts_ms": self.floor.parts if self.floor else None,
            "out_of_reach": self.out_of_reach,
        }

    def line(self, unit: str = "journey") -> str:
        verdict = "within" if self.within else f"{self.journey.total_ms / self.budget_ms:.1f}x over"
        more = ", ".join(f"{role} +{ms:.1f}" for role, ms in self.excess_by_role().items())
        text = (
            f"   {self.target}: needs <= {self.budget_ms:.1f} ms CPU/{unit} ({self.baseline.total_ms:.1f} / "
            f"{self.target_ratio:g}); costs {self.journey.total_ms:.1f} ({verdict}; CPU-bound ratio "
            f"{self.cpu_bound_ratio:.2f}; beyond the baseline: {more or 'nothing'})"
        )
        if self.floor is not None:
            parts = " + ".join(f"{name} {ms:.1f}" for name, ms in self.floor.parts.items())
            reach = (
                "OUT OF REACH here while CPU-bound: the floor alone is over budget (the baseline kept "
                f"{self.baseline.utilisation:.0%} of the cores busy; only a journey that keeps more of them busy "
                "can still meet the target)"
                if self.out_of_reach
                else "floor within budget"
            )
            text += f"\n     floor {self.floor.ms:.1f} ms ({parts}): {reach}"
        return text


def ceiling_lines(journey: CpuPhase, budgets: list[CpuBudget], unit: str = "journey") -> list[str]:
    """A saga's CPU-bound ceiling and what each of its targets asks of its CPU."""
    head = (
        f"   CPU-bound ceiling: {journey.cores} cores / {journey.total_ms / 1000:.3f} CPU s per {unit} = "
        f"{journey.ceiling_rate:.1f} /s"
    )
    return [head] + [b.line(unit) for b in budgets]


@dataclass(frozen=True)
class Target:
    """A ratio target of issue 16: `figure` (e.g. naive_ratio) ≥ `ratio` against the `baseline` phase."""

    figure: str
    baseline: str  # the phase measured as its baseline: "naive", "same_shape", "raw_smtp", "argon2"
    ratio: float


def section_cpu(
    phases: dict[str, CpuPhase], targets: list[Target], intrinsic: dict[str, float] | None = None
) -> tuple[dict[str, object], list[CpuBudget]]:
    """A section's CPU figures for `--json` from its phases ("journey" and its baselines) and its targets:
    `cpu_ms_per_journey`, `<baseline>_cpu_ms_per_journey`, `cpu_phases` (wall time, cores, utilisation) and
    `cpu_ceiling` (the CPU-bound rates and each target's CPU budget and the journey's floor); also the budgets, to
    print. `intrinsic`: work the journey cannot skip, ms per journey by name (see CpuFloor)."""
    journey = phases["journey"]
    floor = CpuFloor.of(journey, phases.get("same_shape"), intrinsic or {})
    budgets = [CpuBudget(f"{t.figure} >= {t.ratio:g}", t.ratio, phases[t.baseline], journey, floor) for t in targets]
    figures: dict[str, object] = {
        ("cpu_ms_per_journey" if name == "journey" else f"{name}_cpu_ms_per_journey"): cpu_ms_per_journey(phase)
        for name, phase in phases.items()
    }
    figures["cpu_phases"] = {name: phase.figures() for name, phase in phases.items()}
    figures["cpu_ceiling"] = {
        "cores": journey.cores,
        **{
            ("ceiling_rate" if name == "journey" else f"{name}_ceiling_rate"): _finite(phase.ceiling_rate)
            for name, phase in phases.items()
        },
        "targets": [b.figures() for b in budgets],
    }
    return figures, budgets

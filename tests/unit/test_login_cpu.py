"""The argon2 threads' lower priority and the bench's CPU accounting by process."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

from prognet import passwords
from prognet.settings import Settings
from prognet_dev.bench.cpu import cpu_by_role, per_unit_ms

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice and /proc are Linux")


@linux_only
def test_argon2_threads_run_below_the_event_loop() -> None:
    settings = Settings(argon2_time_cost=1, argon2_memory_cost_kib=8, argon2_parallelism=1)

    async def hash_once() -> str:
        return await passwords.hash_password(settings, "correct horse battery staple")

    assert asyncio.run(hash_once()).startswith("$argon2id$")
    argon2 = [t for t in threading.enumerate() if t.name.startswith("argon2")]
    assert argon2, "the hash ran on the argon2 executor"
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for thread in argon2:
        assert thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, loop_nice + passwords.ARGON2_NICENESS)


@linux_only
def test_cpu_by_role_counts_this_process_per_unit() -> None:
    before = cpu_by_role()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU here
        pass
    per_unit = per_unit_ms(before, cpu_by_role(), 2)
    assert 80 <= per_unit["bench client"] <= 200  # ~100 ms per unit, with clock-tick rounding and noise

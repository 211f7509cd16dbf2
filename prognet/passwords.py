"""Password hashing (argon2id, prognet/argon2id.py). ~130 ms of CPU per call: callers always run it off the
event loop, on the hashing threads here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from argon2 import PasswordHasher

from prognet import argon2id
from prognet.settings import Settings

# How much lower than the event loop's the argon2 threads' scheduling priority is (Linux nice steps, relative).
ARGON2_NICENESS = 10


def lower_thread_priority() -> None:
    """Run this argon2 thread (and the lane threads libargon2 starts from it, which inherit its nice value)
    below the event loop: with every core busy hashing, the loop still answers `/healthz`, reads the next
    request and finishes logins whose hash is done, instead of waiting for a time slice behind the hashes.
    Nothing is lost while the loop idles: the hashes get every cycle it leaves."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux (per-thread nice): plain priority
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + ARGON2_NICENESS))


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset or `taskset`), not the host's: each hashing thread
    keeps a `memory_cost` block (64 MiB), so a pool sized for a 64-core host would keep 4 GiB."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


CORES = usable_cores()
# libargon2 runs without the GIL; one thread per core keeps the CPU busy without thrashing memory, and bounds the
# hashes running at once to the cores (the rest wait in the executor's queue, not in the scheduler's).
_EXECUTOR = ThreadPoolExecutor(max_workers=CORES, thread_name_prefix="argon2", initializer=lower_thread_priority)

_running = 0  # hashes being computed on the hashing threads
_running_lock = threading.Lock()


@contextlib.contextmanager
def _lane_threads() -> Iterator[int]:
    """How many threads may fill this hash's lanes: one per core when it is the only hash, else one.

    A hash alone gets the idle cores (one login at rest: ~55 ms instead of ~105). While others run, the cores are
    taken anyway, and libargon2's lane threads, started and joined 12 times per hash, cost the event loop its
    prompt wake-ups: with both cores hashing, a one-byte round trip to a thread of the hashing process took
    2.4 ms at p99 with lane threads against 0.13-0.19 ms with one thread per hash (0.13-0.17 at rest), and
    hashes/s rose 17.0-17.9 -> 18.0-18.7 (bench round trips, two hashing threads, 12 s each)."""
    global _running
    with _running_lock:
        threads = CORES if _running == 0 else 1
        _running += 1
    try:
        yield threads
    finally:
        with _running_lock:
            _running -= 1


def _hash(password: str, time_cost: int, memory_cost: int, parallelism: int) -> str:
    with _lane_threads() as threads:
        return argon2id.hash_password(password, time_cost, memory_cost, parallelism, threads)


def _verify(password_hash: str, password: str) -> bool:
    with _lane_threads() as threads:
        return argon2id.verify_password(password_hash, password, threads)


@lru_cache
def _hasher(time_cost: int, memory_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(*parameters(settings))


def parameters(settings: Settings) -> tuple[int, int, int]:
    """(time_cost, memory_cost in KiB, parallelism) for new hashes."""
    return settings.argon2_time_cost, settings.argon2_memory_cost_kib, settings.argon2_parallelism


async def hash_password(settings: Settings, password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _hash, password, *parameters(settings))


async def verify_password(settings: Settings, password_hash: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _verify, password_hash, password)


def needs_rehash(settings: Settings, password_hash: str) -> bool:
    return hasher(settings).check_needs_rehash(password_hash)


@lru_cache
def _dummy_hash(time_cost: int, memory_cost: int, parallelism: int) -> str:
    return argon2id.hash_password("not-a-real-password", time_cost, memory_cost, parallelism)


def _verify_against_dummy(params: tuple[int, int, int], password: str) -> None:
    _verify(_dummy_hash(*params), password)


async def verify_against_dummy(settings: Settings, password: str) -> None:
    """Spend the same time as a real verification when the email is unknown (no user enumeration). The dummy
    hash is made on a hashing thread too, the first time: the event loop never hashes."""
    await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _verify_against_dummy, parameters(settings), password)

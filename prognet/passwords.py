"""Password hashing (argon2id, prognet/argon2id.py). ~130 ms of CPU per call: callers always run it off the
event loop, on the hashing threads here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
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


# libargon2 runs without the GIL; one thread per core keeps the CPU busy without thrashing memory, and bounds the
# hashes running at once to the cores (the rest wait in the executor's queue, not in the scheduler's).
_EXECUTOR = ThreadPoolExecutor(
    max_workers=os.cpu_count() or 2, thread_name_prefix="argon2", initializer=lower_thread_priority
)


@lru_cache
def _hasher(time_cost: int, memory_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_cost_kib, settings.argon2_parallelism)


def parameters(settings: Settings) -> tuple[int, int, int]:
    """(time_cost, memory_cost in KiB, parallelism) for new hashes."""
    return settings.argon2_time_cost, settings.argon2_memory_cost_kib, settings.argon2_parallelism


async def hash_password(settings: Settings, password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(
        _EXECUTOR, argon2id.hash_password, password, *parameters(settings)
    )


async def verify_password(settings: Settings, password_hash: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(
        _EXECUTOR, argon2id.verify_password, password_hash, password
    )


def needs_rehash(settings: Settings, password_hash: str) -> bool:
    return hasher(settings).check_needs_rehash(password_hash)


@lru_cache
def _dummy_hash(time_cost: int, memory_cost: int, parallelism: int) -> str:
    return argon2id.hash_password("not-a-real-password", time_cost, memory_cost, parallelism)


def _verify_against_dummy(params: tuple[int, int, int], password: str) -> None:
    argon2id.verify_password(_dummy_hash(*params), password)


async def verify_against_dummy(settings: Settings, password: str) -> None:
    """Spend the same time as a real verification when the email is unknown (no user enumeration). The dummy
    hash is made on a hashing thread too, the first time: the event loop never hashes."""
    await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _verify_against_dummy, parameters(settings), password)

"""argon2id hashes and verifications through libargon2 (argon2-cffi's build), each hashing thread reusing one block
of memory instead of mapping `memory_cost` KiB afresh for every hash.

With the library's defaults every hash mmaps its 64 MiB, faults it in page by page and unmaps it: a quarter of
the CPU of a hash was the kernel's (155 ms per hash here, 42 of them system time), and that kernel work is not
preempted on a kernel built without preemption, so a woken event loop waited for a core 7.4–8 ms (p99) while
its process hashed, against 2.8–2.9 ms with the memory reused (a bare round trip, argon2 on both cores). Reused,
a hash costs 22 % less CPU. libargon2 wipes the memory before it hands it back (its `clear_internal_memory`
default), so what a thread keeps between hashes is zeros; each thread keeps one block (64 MiB by default).

The encoded form is argon2's PHC string, `$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`, byte for byte what
argon2-cffi writes: either verifies the other's hashes. Verification reads only that canonical form (no padding,
no signs or leading zeros, parameters in that order); a hash of another type or version is verified by
argon2-cffi itself. A hash whose memory is over `MAX_KEPT_KIB` is computed in a block of its own, released after.

How many threads fill a hash's lanes is the caller's choice (`threads`; the hash does not depend on it): libargon2
starts and joins that many threads for every slice of every pass, 12 rounds per hash at t=3, where one thread
fills the lanes in turn. prognet/passwords.py uses one thread per hash while other hashes run.
"""

from __future__ import annotations

import base64
import ctypes
import hmac
import os
import re
import threading
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION, Type, ffi, lib

SALT_BYTES = 16
HASH_BYTES = 32
MAX_KEPT_KIB = 256 * 1024  # a thread keeps a block up to this size between hashes (64 MiB by default settings)
_PREFIX = f"$argon2id$v={ARGON2_VERSION}$"
_CANONICAL = re.compile(
    re.escape(_PREFIX)
    + r"m=([1-9][0-9]{0,9}),t=([1-9][0-9]{0,9}),p=([1-9][0-9]{0,7})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)
_LIMIT = 2**32  # libargon2's time and memory costs are 32-bit
_MAX_LANES = 0xFFFFFF

_memory = threading.local()  # .block: this thread's kept block; .oneoff: a larger one for the hash under way


def _allocate(memory: Any, size: int) -> int:
    if size > MAX_KEPT_KIB * 1024:
        block = _memory.oneoff = ffi.new("uint8_t[]", size)
    else:
        block = getattr(_memory, "block", None)
        if block is None or len(block) < size:
            block = _memory.block = ffi.new("uint8_t[]", size)
    memory[0] = block
    return 0  # ARGON2_OK


def _keep(memory: Any, size: int) -> None:
    """libargon2 has wiped it already; the thread keeps its block for the next hash (a one-off goes)."""
    _memory.oneoff = None


try:
    ALLOCATE: Any = ffi.callback("int(uint8_t **, size_t)", _allocate, error=-1)
    KEEP: Any = ffi.callback("void(uint8_t *, size_t)", _keep)
except MemoryError:  # a host that refuses writable+executable memory to cffi: libargon2 maps memory per hash
    ALLOCATE = KEEP = ffi.NULL


def _wipe_blocks() -> None:
    """After a failed hash: libargon2 wipes its memory only on success, so whatever it filled is cleared here."""
    for name in ("block", "oneoff"):
        block = getattr(_memory, name, None)
        if block is not None:
            ctypes.memset(int(ffi.cast("uintptr_t", block)), 0, len(block))
    _memory.oneoff = None


def _tag(
    password: bytes, salt: bytes, time_cost: int, memory_cost: int, parallelism: int, length: int, threads: int
) -> bytes:
    out = ffi.new("uint8_t[]", length)
    pwd, salt_buf = ffi.new("uint8_t[]", password), ffi.new("uint8_t[]", salt)
    context = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": length,
            "pwd": pwd,
            "pwdlen": len(password),
            "salt": salt_buf,
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": time_cost,
            "m_cost": memory_cost,
            "lanes": parallelism,
            "threads": max(1, min(threads, parallelism)),
            "version": ARGON2_VERSION,
            "allocate_cbk": ALLOCATE,
            "free_cbk": KEEP,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    code = lib.argon2_ctx(context, Type.ID.value)
    if code != lib.ARGON2_OK:
        _wipe_blocks()
        raise argon2.exceptions.HashingError(ffi.string(lib.argon2_error_message(code)).decode("ascii"))
    return bytes(ffi.buffer(out, length))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, time_cost: int, memory_cost: int, parallelism: int, threads: int = 1) -> str:
    """`parallelism` lanes (part of the hash), filled by up to `threads` threads (any number: the same hash)."""
    salt = os.urandom(SALT_BYTES)
    tag = _tag(password.encode(), salt, time_cost, memory_cost, parallelism, HASH_BYTES, threads)
    return f"{_PREFIX}m={memory_cost},t={time_cost},p={parallelism}${_b64(salt)}${_b64(tag)}"


def verify_password(encoded: str, password: str, threads: int = 1) -> bool:
    """True if `password` is the one `encoded` was made from; False for any other, or a hash that is not one."""
    try:
        if not encoded.startswith(_PREFIX):  # another type or version: argon2-cffi's to verify
            return argon2.PasswordHasher.from_parameters(argon2.extract_parameters(encoded)).verify(encoded, password)
        match = _CANONICAL.fullmatch(encoded)
        if match is None:
            return False
        m, t, p = (int(group) for group in match.group(1, 2, 3))
        salt_text, tag_text = match.group(4, 5)
        salt, expected = _unb64(salt_text), _unb64(tag_text)
        if (
            not (8 * p <= m < _LIMIT and t < _LIMIT and p <= _MAX_LANES)
            or len(salt) < 8
            or len(expected) < 4
            or _b64(salt) != salt_text
            or _b64(expected) != tag_text
        ):
            return False
        tag = _tag(password.encode(), salt, t, m, p, len(expected), threads)
    except (InvalidHashError, VerificationError, ValueError, OverflowError, argon2.exceptions.HashingError):
        return False
    return hmac.compare_digest(tag, expected)

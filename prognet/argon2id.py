"""argon2id hashes and verifications through libargon2 (argon2-cffi's build), each hashing thread reusing one block
of memory instead of mapping `memory_cost` KiB afresh for every hash.

With the library's defaults every hash mmaps its 64 MiB, faults it in page by page and unmaps it: a quarter of
the CPU of a hash was the kernel's (155 ms per hash here, 42 of them system time), and that kernel work is not
preempted on a kernel built without preemption, so a woken event loop waited for a core 7.4–8 ms (p99) while
its process hashed, against 2.8–2.9 ms with the memory reused (a bare round trip, argon2 on both cores). Reused,
a hash costs 22 % less CPU. libargon2 wipes the memory before it hands it back (its `clear_internal_memory`
default), so what a thread keeps between hashes is zeros; each thread keeps one block (64 MiB by default).

The encoded form is argon2's PHC string, `$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`, exactly what
argon2-cffi writes and reads: either verifies the other's hashes. A hash of another type or version is verified
by argon2-cffi itself.
"""

from __future__ import annotations

import base64
import hmac
import os
import threading
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION, Type, ffi, lib

SALT_BYTES = 16
HASH_BYTES = 32
_PREFIX = "$argon2id$"

_memory = threading.local()


@ffi.callback("int(uint8_t **, size_t)")
def _allocate(memory: Any, size: int) -> int:
    block = getattr(_memory, "block", None)
    if block is None or len(block) < size:
        block = _memory.block = ffi.new("uint8_t[]", size)
    memory[0] = block
    return 0  # ARGON2_OK


@ffi.callback("void(uint8_t *, size_t)")
def _keep(memory: Any, size: int) -> None:
    """libargon2 has wiped it already; the thread keeps its block for the next hash."""


def _tag(password: bytes, salt: bytes, time_cost: int, memory_cost: int, parallelism: int, length: int) -> bytes:
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
            "threads": parallelism,
            "version": ARGON2_VERSION,
            "allocate_cbk": _allocate,
            "free_cbk": _keep,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    code = lib.argon2_ctx(context, Type.ID.value)
    if code != lib.ARGON2_OK:
        raise argon2.exceptions.HashingError(ffi.string(lib.argon2_error_message(code)).decode("ascii"))
    return bytes(ffi.buffer(out, length))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, time_cost: int, memory_cost: int, parallelism: int) -> str:
    salt = os.urandom(SALT_BYTES)
    tag = _tag(password.encode(), salt, time_cost, memory_cost, parallelism, HASH_BYTES)
    return f"{_PREFIX}v={ARGON2_VERSION}$m={memory_cost},t={time_cost},p={parallelism}${_b64(salt)}${_b64(tag)}"


def verify_password(encoded: str, password: str) -> bool:
    """True if `password` is the one `encoded` was made from; False for any other, or a hash that is not one."""
    try:
        params = argon2.extract_parameters(encoded)
        if params.type is not Type.ID or params.version != ARGON2_VERSION or not encoded.startswith(_PREFIX):
            return argon2.PasswordHasher.from_parameters(params).verify(encoded, password)
        salt_text, tag_text = encoded.rsplit("$", 2)[1:]
        salt, expected = _unb64(salt_text), _unb64(tag_text)
        tag = _tag(password.encode(), salt, params.time_cost, params.memory_cost, params.parallelism, len(expected))
    except (InvalidHashError, VerificationError, ValueError, argon2.exceptions.HashingError):
        return False
    return hmac.compare_digest(tag, expected)

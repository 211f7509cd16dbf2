"""argon2id hashes with reused memory: the same PHC strings as argon2-cffi, nothing of a password kept."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from argon2 import PasswordHasher, Type
from argon2.low_level import ffi, hash_secret_raw

from prognet import argon2id, passwords
from prognet.settings import Settings

FAST = (1, 64, 1)  # time_cost, memory_cost KiB, parallelism: a test-sized hash
LIBRARY = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
SMALL = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 64, "argon2_parallelism": 1}


def test_our_hashes_and_the_librarys_verify_each_other():
    ours = argon2id.hash_password("correct horse", *FAST)
    assert ours.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert LIBRARY.verify(ours, "correct horse")
    assert argon2id.verify_password(ours, "correct horse")
    assert argon2id.verify_password(LIBRARY.hash("correct horse"), "correct horse")
    assert not argon2id.verify_password(ours, "correct horse ")
    assert not argon2id.verify_password(LIBRARY.hash("correct horse"), "Correct horse")


def test_lanes_and_non_ascii_passwords_hash_as_the_library_does():
    ours = argon2id.hash_password("pässwörd ✓", 2, 256, 4)
    assert PasswordHasher().verify(ours, "pässwörd ✓")
    assert argon2id.verify_password(
        PasswordHasher(time_cost=2, memory_cost=256, parallelism=4).hash("pässwörd ✓"), "pässwörd ✓"
    )


@pytest.mark.parametrize("threads", [1, 2, 4, 9])
def test_the_number_of_threads_does_not_change_the_hash(threads):
    salt = b"saltsaltsaltsalt"
    expected = hash_secret_raw(b"lanes", salt, 2, 256, 4, 32, Type.ID)
    assert argon2id._tag(b"lanes", salt, 2, 256, 4, 32, threads) == expected
    ours = argon2id.hash_password("lanes", 2, 256, 4, threads=threads)
    assert argon2id.verify_password(ours, "lanes", threads=1) and argon2id.verify_password(ours, "lanes", threads=4)


def test_a_hash_gets_a_thread_per_core_alone_and_one_while_others_run():
    with passwords._lane_threads() as alone, passwords._lane_threads() as second, passwords._lane_threads() as third:
        pass
    assert (alone, second, third) == (passwords.CORES, 1, 1)
    with pytest.raises(RuntimeError), passwords._lane_threads():
        raise RuntimeError("a failed hash")
    with passwords._lane_threads() as again:  # nothing left counted as running
        assert again == passwords.CORES


async def test_the_api_hashes_with_the_threads_it_is_given(monkeypatch):
    seen = []
    real = argon2id.verify_password
    monkeypatch.setattr(argon2id, "verify_password", lambda *a: seen.append(a[2]) or real(*a))
    digest = argon2id.hash_password("pw", *FAST)
    settings = Settings(**SMALL)
    assert await passwords.verify_password(settings, digest, "pw")
    with passwords._lane_threads():  # another hash under way
        assert await passwords.verify_password(settings, digest, "pw")
    assert seen == [passwords.CORES, 1]


def test_each_hash_has_its_own_salt():
    assert argon2id.hash_password("same", *FAST) != argon2id.hash_password("same", *FAST)


def test_a_hash_of_another_type_is_verified_by_the_library():
    argon2i = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, type=Type.I).hash("secret")
    assert argon2id.verify_password(argon2i, "secret")
    assert not argon2id.verify_password(argon2i, "other")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$",  # no tag
        "$argon2id$v=19$m=64,t=1,p=1$!!!notbase64$YWJjZGVmZ2hpamtsbW5vcA",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",  # salt shorter than 8 bytes
        "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA",  # memory below 8 KiB per lane
    ],
)
def test_anything_that_is_not_a_valid_hash_verifies_nothing(encoded):
    assert argon2id.verify_password(encoded, "secret") is False


def test_a_thread_reuses_one_block_and_it_holds_nothing_of_the_password_afterwards():
    blocks = []

    def hash_twice() -> None:
        argon2id.hash_password("first secret", *FAST)
        first = argon2id._memory.block
        argon2id.verify_password(argon2id.hash_password("second secret", *FAST), "second secret")
        blocks.extend([first, argon2id._memory.block])

    thread = threading.Thread(target=hash_twice)
    thread.start()
    thread.join()
    first, last = blocks
    assert first is last  # mapped once, not per hash
    assert bytes(ffi.buffer(last)) == bytes(len(last))  # wiped by libargon2 before it came back


@pytest.mark.parametrize(
    "encoded",
    [
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA=$YWJjZGVmZ2hpamtsbW5vcA",  # padding
        "$argon2id$v=19$m=064,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",  # leading zero
        "$argon2id$v=19$t=1,m=64,p=1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",  # order
        "$argon2id$v=+19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",  # sign
        "$argon2id$v=19$m=64,t=1,p=-1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",
        "$argon2id$v=19$m=4294967296,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",  # over 32 bits
        "$argon2id$v=19$m=64,t=4294967296,p=1$c2FsdHNhbHRzYWx0c2FsdA$YWJjZGVmZ2hpamtsbW5vcA",
    ],
)
def test_only_the_canonical_form_is_read_and_out_of_range_costs_verify_nothing(encoded):
    assert argon2id.verify_password(encoded, "secret") is False


def test_a_canonical_hash_rewritten_with_padding_no_longer_verifies():
    ours = argon2id.hash_password("secret", *FAST)
    assert argon2id.verify_password(ours, "secret")
    assert not argon2id.verify_password(ours + "=", "secret")


def test_memory_over_the_kept_size_is_a_one_off(monkeypatch):
    monkeypatch.setattr(argon2id, "MAX_KEPT_KIB", 32)
    kept = []

    def hash_big() -> None:
        assert argon2id.verify_password(argon2id.hash_password("secret", 1, 64, 1), "secret")
        kept.extend([getattr(argon2id._memory, "block", None), argon2id._memory.oneoff])

    thread = threading.Thread(target=hash_big)
    thread.start()
    thread.join()
    assert kept == [None, None]  # the 64 KiB block went with its hash


def test_the_event_loop_never_hashes_not_even_the_dummy_for_an_unknown_email():
    passwords._dummy_hash.cache_clear()
    on_loop = []

    def login_with_unknown_email() -> None:
        asyncio.run(passwords.verify_against_dummy(Settings(**SMALL), "a guess"))
        on_loop.append(getattr(argon2id._memory, "block", None))

    thread = threading.Thread(target=login_with_unknown_email)
    thread.start()
    thread.join()
    assert on_loop == [None]  # made and verified on a hashing thread


def test_the_hashing_pool_is_sized_to_the_cores_this_process_may_use():
    assert passwords.CORES == len(os.sched_getaffinity(0)) == passwords._EXECUTOR._max_workers

"""The logins section's floor: bare round trips between a client process and a thread of this one, or a process
of their own."""

from __future__ import annotations

import time

import pytest

from prognet_dev.bench.cpu import role_of
from prognet_dev.bench.roundtrip import RoundTrips


def test_round_trips_are_timed_until_the_block_ends_and_the_client_exits() -> None:
    with RoundTrips(interval=0.01) as trips:
        time.sleep(0.3)
    assert 10 <= len(trips.latencies) <= 40  # one every 10 ms, each well under one
    assert all(0 < seconds < 0.25 for seconds in trips.latencies)
    assert role_of(trips.client_argv) == "round trips"  # counted apart from the bench client's CPU


def test_a_client_that_dies_fails_the_measurement_instead_of_passing_a_short_sample() -> None:
    with pytest.raises(RuntimeError, match="client exited"), RoundTrips(interval=0.01) as trips:
        time.sleep(0.05)
        trips._client.kill()
        time.sleep(0.05)


def test_round_trips_answered_by_a_process_of_their_own() -> None:
    with RoundTrips(interval=0.01, own_process=True) as trips:
        time.sleep(0.3)
    assert 10 <= len(trips.latencies) <= 40
    assert all(0 < seconds < 0.25 for seconds in trips.latencies)
    assert trips._answering is not None and trips._answering.returncode == 0
    assert role_of(list(trips._answering.args)) == "round trips"  # type: ignore[arg-type]


def test_an_answering_process_that_dies_fails_the_measurement() -> None:
    with (
        pytest.raises(RuntimeError, match="answering process exited"),
        RoundTrips(interval=0.01, own_process=True) as trips,
    ):
        time.sleep(0.05)
        assert trips._answering is not None
        trips._answering.kill()
        time.sleep(0.05)

"""The logins section's floor: bare round trips between a client process and a thread of this one."""

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

"""The logins section's floor: bare round trips between this process and an echo process."""

from __future__ import annotations

import time

from prognet_dev.bench.cpu import role_of
from prognet_dev.bench.roundtrip import RoundTrips


def test_round_trips_are_timed_until_the_block_ends_and_the_echo_process_exits() -> None:
    with RoundTrips(interval=0.01) as trips:
        echo = trips._echo
        assert echo.poll() is None  # answering
        time.sleep(0.3)
    assert 10 <= len(trips.latencies) <= 40  # one every 10 ms, each well under one
    assert all(0 < seconds < 0.25 for seconds in trips.latencies)
    assert echo.returncode == 0  # it read end-of-file and exited on its own
    assert role_of(echo.args) == "round trips"  # counted apart from the bench client's CPU

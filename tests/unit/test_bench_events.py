"""The bench's pure helpers: section names, percentiles, stream entry clocks."""

from __future__ import annotations

import argparse

import pytest

from prognet_dev.bench import parse_sections
from prognet_dev.bench.events import entry_seconds, pct


def test_sections_by_name_or_number_include_the_event_sections():
    assert parse_sections("events,sse,webhooks") == {5, 6, 7}
    assert parse_sections("billing, 6") == {4, 6}
    assert parse_sections("telemetry") == {8}
    with pytest.raises(argparse.ArgumentTypeError, match="1-8"):
        parse_sections("9")


def test_pct_is_the_nearest_rank_at_or_below_the_quantile():
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert (pct(values, 0.5), pct(values, 0.99), pct(values, 1.0)) == (51.0, 100.0, 100.0)
    assert pct([7.0], 0.99) == 7.0


def test_entry_seconds_reads_the_redis_clock_of_an_entry_id():
    assert entry_seconds("1795987502130-3") == 1795987502.13
    assert entry_seconds(b"1000-0") == 1.0

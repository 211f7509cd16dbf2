"""When a subscription's Temporal Schedule fires: at every period end counted from the anchor, never before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activities.schedules import EPOCH, schedule_spec
from models.billing_calendar import advance
from models.plans import load_plans

PLANS = {p.id: p for p in load_plans()}
UTC = UTC


def test_a_fixed_period_fires_on_each_boundary_rounded_up_to_the_second():
    plan = PLANS["dev-minutely"]
    anchor = datetime(2026, 11, 26, 3, 15, 57, 729366, tzinfo=UTC)
    [interval] = schedule_spec(plan, anchor).intervals
    assert interval.every == timedelta(seconds=60)
    for k in (1, 2, 100):
        due = advance(anchor, plan, k)
        seconds = (due - EPOCH).total_seconds()
        # the firing time of that period: the first epoch + n*every + offset at or after `due`
        fire = EPOCH + timedelta(
            seconds=(seconds - interval.offset.total_seconds()) // 60 * 60 + 60 + interval.offset.total_seconds()
        )
        assert timedelta(0) <= fire - due < timedelta(seconds=1)


def test_a_month_fires_on_the_anchor_day_and_time():
    spec = schedule_spec(PLANS["starter-monthly"], datetime(2026, 3, 14, 9, 30, 5, tzinfo=UTC))
    [calendar] = spec.calendars
    assert [(r.start, r.end) for r in calendar.day_of_month] == [(14, 14)]
    assert [(r.start, r.end) for r in calendar.month] == [(1, 12)]
    assert (calendar.hour[0].start, calendar.minute[0].start, calendar.second[0].start) == (9, 30, 5)


def test_a_month_anchored_late_also_fires_on_the_last_days_of_shorter_months():
    [calendar] = schedule_spec(PLANS["starter-monthly"], datetime(2026, 1, 31, 12, tzinfo=UTC)).calendars
    assert [r.start for r in calendar.day_of_month] == [28, 29, 30, 31]


def test_a_year_fires_in_the_anchor_month_only():
    [calendar] = schedule_spec(PLANS["team-yearly"], datetime(2026, 6, 2, 8, 0, 0, 1, tzinfo=UTC)).calendars
    assert [(r.start, r.end) for r in calendar.month] == [(6, 6)]
    assert calendar.second[0].start == 1  # 08:00:00.000001 fires at 08:00:01, not a moment early


def test_firings_begin_at_the_first_period_end_never_at_the_anchor():
    anchor = datetime(2026, 11, 26, 3, 15, 57, 729366, tzinfo=UTC)
    for plan_id in ("dev-minutely", "starter-monthly"):
        spec = schedule_spec(PLANS[plan_id], anchor)
        assert spec.start_at == advance(anchor, PLANS[plan_id], 1)

"""Billing calendar maths: period boundaries and proration, pure functions of their inputs.

Both sides use them (the subscription workflow bills by them, the schedule activities fire by them), so they
live here: deterministic, no clock, no I/O. Months add calendar months with the day clamped
(Jan 31 → Feb 28 → Mar 31), always counted from the anchor, so there is no drift.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

from models.plans import Plan


def add_months(moment: datetime, months: int) -> datetime:
    years, month0 = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + years, month0 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def advance(anchor: datetime, plan: Plan, periods: int) -> datetime:
    """The boundary `periods` periods of `plan` after `anchor` (always from the anchor: no drift)."""
    fixed = plan.period()
    if fixed is not None:
        return anchor + fixed * periods
    per_period = plan.interval_count * (12 if plan.interval == "year" else 1)
    return add_months(anchor, per_period * periods)


def prorate(amount: int, part: timedelta, whole: timedelta) -> int:
    """`amount × part / whole` in minor units, rounded half up, `part` clamped to [0, whole]."""
    us = timedelta(microseconds=1)
    part_us, whole_us = max(0, min(part // us, whole // us)), whole // us
    return (2 * amount * part_us + whole_us) // (2 * whole_us)

"""The plan catalogue: configuration kept in the repo (models/plans.json), not a table.

Amounts are in minor units (cents). `development_only` plans (the 60-second plan, so a person can watch
billing cycles run on the embedded stack) exist only outside production.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveInt

CATALOGUE = Path(__file__).with_name("plans.json")
INTERVAL_SECONDS = {"second": 1, "day": 86400, "week": 7 * 86400}


class Plan(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9-]{3,40}$")
    name: str
    amount: PositiveInt
    currency: str = Field(pattern=r"^[a-z]{3}$")
    interval: Literal["second", "day", "week", "month", "year"]
    interval_count: PositiveInt = 1
    trial_days: int = Field(0, ge=0)
    development_only: bool = False

    def period(self) -> timedelta | None:
        """Fixed-length periods; None for calendar intervals (month, year), which need a calendar."""
        seconds = INTERVAL_SECONDS.get(self.interval)
        return timedelta(seconds=seconds * self.interval_count) if seconds else None


class Catalogue(BaseModel):
    plans: list[Plan]


@lru_cache
def load_plans(path: Path = CATALOGUE) -> tuple[Plan, ...]:
    catalogue = Catalogue.model_validate(json.loads(path.read_text()))
    ids = [p.id for p in catalogue.plans]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate plan ids in {path}")
    return tuple(catalogue.plans)


def available_plans(environment: str) -> list[Plan]:
    return [p for p in load_plans() if environment != "production" or not p.development_only]

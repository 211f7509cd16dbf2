"""The plan catalogue: configuration in the repo, listed without logging in."""

from __future__ import annotations

from models.plans import available_plans, load_plans
from prognet.settings import Settings


async def test_plans_are_listed_without_a_login(client):
    r = await client.get("/v1/plans")
    assert r.status_code == 200
    plans = {p["id"]: p for p in r.json()["items"]}
    assert plans["team-monthly"]["amount"] == 4900 and plans["team-monthly"]["interval"] == "month"
    assert plans["dev-minutely"]["interval"] == "second" and plans["dev-minutely"]["interval_count"] == 60


def test_the_60_second_plan_exists_in_development_only():
    minutely = next(p for p in load_plans() if p.id == "dev-minutely")
    assert minutely.period().total_seconds() == 60 and minutely.development_only
    assert "dev-minutely" not in {p.id for p in available_plans("production")}
    assert "dev-minutely" in {p.id for p in available_plans(Settings().environment)}


def test_catalogue_is_valid():
    plans = load_plans()
    assert len({p.id for p in plans}) == len(plans)
    assert all(p.amount > 0 and len(p.currency) == 3 for p in plans)

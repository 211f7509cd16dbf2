"""The plan catalogue (public: a sign-up page lists plans before anyone logs in)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import SettingsDep
from api.problems import UNKNOWN_PLAN, Problem
from models.plans import Plan, available_plans
from prognet.settings import Settings

router = APIRouter(prefix="/v1/plans", tags=["plans"])


def resolve_plan(settings: Settings, plan_id: str) -> Plan:
    """The catalogue entry a request names (development-only plans do not exist in production), else 422."""
    for plan in available_plans(settings.environment):
        if plan.id == plan_id:
            return plan
    raise Problem(UNKNOWN_PLAN, f"No plan '{plan_id}'; see GET /v1/plans.")


class PlanList(BaseModel):
    items: list[Plan]


@router.get(
    "",
    response_model=PlanList,
    summary="List the plans one can subscribe to",
    description="Amounts are in minor units (cents). Development-only plans are hidden in production.",
)
async def list_plans(settings: SettingsDep) -> PlanList:
    return PlanList(items=available_plans(settings.environment))

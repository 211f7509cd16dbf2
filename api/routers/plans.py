"""The plan catalogue (public: a sign-up page lists plans before anyone logs in)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import SettingsDep
from models.plans import Plan, available_plans

router = APIRouter(prefix="/v1/plans", tags=["plans"])


class PlanList(BaseModel):
    items: list[Plan]


@router.get("", response_model=PlanList, summary="List the plans one can subscribe to",
            description="Amounts are in minor units (cents). Development-only plans are hidden in production.")
async def list_plans(settings: SettingsDep) -> PlanList:
    return PlanList(items=available_plans(settings.environment))

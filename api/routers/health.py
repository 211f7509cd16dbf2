"""Liveness (`/healthz`, always cheap) and readiness (`/readyz`, checks every dependency)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import DbDep, RedisDep, TemporalConnectorDep
from api.problems import SERVICE_UNAVAILABLE, Problem, problem_responses
from api.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse()


async def _bounded(check, timeout: float) -> bool:
    try:
        return bool(await asyncio.wait_for(check, timeout))
    except Exception:
        return False


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    summary="Readiness: PostgreSQL, Redis and Temporal answer",
    responses=problem_responses(503),
)
async def readyz(engine: DbDep, redis: RedisDep, temporal: TemporalConnectorDep) -> ReadinessResponse:
    async def postgres() -> bool:
        async with engine.connect() as conn:
            return (await conn.execute(text("select 1"))).scalar() == 1

    names = ("postgres", "redis", "temporal")
    results = await asyncio.gather(
        _bounded(postgres(), CHECK_TIMEOUT_SECONDS),
        _bounded(redis.ping(), CHECK_TIMEOUT_SECONDS),
        _bounded(temporal.is_healthy(CHECK_TIMEOUT_SECONDS), CHECK_TIMEOUT_SECONDS + 0.5),
    )
    checks = {name: "ok" if ok else "down" for name, ok in zip(names, results, strict=False)}
    down = [name for name, state in checks.items() if state == "down"]
    if down:
        raise Problem(
            SERVICE_UNAVAILABLE,
            f"Not ready: {', '.join(down)} unreachable.",
            checks=checks,
            headers={"Retry-After": "5"},
        )
    return ReadinessResponse(checks=checks)

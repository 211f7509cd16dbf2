"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, DbDep
from api.problems import NOT_FOUND, Problem, problem_responses
from api.schemas import MeResponse
from models.db import transaction
from models.tables import User

router = APIRouter(prefix="/v1", tags=["me"])


@router.get(
    "/me", response_model=MeResponse, summary="The authenticated user's account", responses=problem_responses(401, 404)
)
async def me(caller: CurrentUser, engine: DbDep) -> MeResponse:
    async with transaction(engine) as db:
        user = await db.get(User, caller.user_id)
    if user is None:
        raise Problem(NOT_FOUND, "This account no longer exists.")
    return MeResponse(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        status=user.status,
        created_at=user.created_at,
        verified_at=user.verified_at,
    )

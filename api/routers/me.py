"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import ConsistentAfter, CurrentUser, ReadModelsDep
from api.problems import NOT_FOUND, Problem, problem_responses
from api.schemas import MeResponse

router = APIRouter(prefix="/v1", tags=["me"])


@router.get(
    "/me", response_model=MeResponse, summary="The authenticated user's account", responses=problem_responses(401, 404)
)
async def me(
    caller: CurrentUser, reads: ReadModelsDep, response: Response, consistent_after: ConsistentAfter = None
) -> MeResponse:
    found = await reads.user_profile(caller.user_id, consistent_after)
    if found is None:
        raise Problem(NOT_FOUND, "This account no longer exists.")
    profile, source = found
    response.headers["Read-Source"] = source
    return MeResponse.model_validate(profile)

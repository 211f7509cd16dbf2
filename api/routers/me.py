"""The caller's own account: read it, change the profile, change the password."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response, status

from api.body_guard import require_json_body
from api.current_password import prove_current_password
from api.deps import (
    ClientAddress,
    ConsistentAfter,
    CurrentUser,
    DbDep,
    ReadModelsDep,
    SessionsDep,
    SettingsDep,
    ThrottleDep,
)
from api.problems import NOT_FOUND, Problem, problem_responses
from api.read_models import profile_from_primary
from api.schemas import MeResponse, PasswordChange, ProfileUpdate
from models.db import transaction
from models.events import record_event
from models.tables import User
from prognet import passwords

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1", tags=["me"], dependencies=[Depends(require_json_body)])


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


@router.patch(
    "/me",
    response_model=MeResponse,
    summary="Change your profile",
    description="Only the fields sent change; each change is a `user.profile_updated` event (old and new values). "
    "The email address changes through `POST /v1/me/email`, the password through `POST /v1/me/password`.",
    responses=problem_responses(400, 401, 404, 413, 415, 422, 503),
)
async def update_profile(body: ProfileUpdate, caller: CurrentUser, engine: DbDep) -> MeResponse:
    async with transaction(engine, user_id=caller.user_id) as db:
        user = await db.get(User, caller.user_id, with_for_update=True)
        if user is None:
            raise Problem(NOT_FOUND, "This account no longer exists.")
        changes: dict[str, object] = {}
        if "display_name" in body.model_fields_set and body.display_name != user.display_name:
            changes["display_name"] = {"old": user.display_name, "new": body.display_name}
            user.display_name = body.display_name
        if changes:
            db.add(user)
            record_event(db, "user.profile_updated", "user", user.id, {"changes": changes}, actor_id=caller.user_id)
    profile = await profile_from_primary(engine, caller.user_id)  # the write tables: this answer follows a write
    if profile is None:
        raise Problem(NOT_FOUND, "This account no longer exists.")
    return MeResponse.model_validate(profile)


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Change your password",
    description="Needs the current password (a wrong one is 403 and counts like a failed login; too many: 429 "
    "with Retry-After). Every other session of the account ends (their access and refresh tokens stop "
    "working); this one stays. Emits `user.password_changed`.",
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
)
async def change_password(
    body: PasswordChange,
    caller: CurrentUser,
    engine: DbDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    throttle: ThrottleDep,
    address: ClientAddress,
) -> Response:
    await prove_current_password(settings, engine, throttle, address, caller, body.current_password.get_secret_value())
    new_hash = await passwords.hash_password(settings, body.new_password.get_secret_value())
    # Sessions first: a database failure after this leaves the old password with fewer sessions, never the new
    # password with sessions that should have ended.
    revoked = await sessions.revoke_others(caller.user_id, keep=caller.session_id)
    async with transaction(engine, user_id=caller.user_id) as db:
        user = await db.get(User, caller.user_id, with_for_update=True)
        if user is None:
            raise Problem(NOT_FOUND, "This account no longer exists.")
        user.password_hash = new_hash
        db.add(user)
        record_event(
            db, "user.password_changed", "user", user.id, {"sessions_revoked": revoked}, actor_id=caller.user_id
        )
    log.info("password changed", extra={"user_id": str(caller.user_id), "sessions_revoked": revoked})
    return Response(status_code=status.HTTP_204_NO_CONTENT)

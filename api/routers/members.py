"""Members of a tenant: list, change a role, remove (or leave).

Role rules: owners and admins manage members; only an owner grants or takes away `owner`; admins cannot remove
owners; anyone may leave; a tenant always keeps at least one owner. Changes lock the tenant row first, so two
owners demoting each other at once cannot leave the tenant ownerless, and write their domain event in the same
transaction.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.body_guard import require_json_body
from api.deps import MANAGER_ROLES, TENANT_NOT_FOUND, CurrentUser, DbDep, TenantIdPath, TenantMember
from api.problems import FORBIDDEN, LAST_OWNER, NOT_FOUND, Problem, problem_responses
from api.schemas import ChangeRoleRequest, MemberView
from models.db import transaction
from models.events import record_event
from models.tables import Membership, Tenant, User

log = logging.getLogger("prognet.api")

router = APIRouter(
    prefix="/v1/tenants/{tenant_id}/members", tags=["tenants"], dependencies=[Depends(require_json_body)]
)

UserIdPath = Annotated[uuid.UUID, Path(description="The member's user id.")]
MEMBER_NOT_FOUND = "No member with this id in this tenant."


def _view(membership: Membership, user: User) -> MemberView:
    return MemberView(
        user_id=membership.user_id,
        email=user.email,
        display_name=user.display_name,
        role=membership.role,
        joined_at=membership.created_at,
    )


async def _lock(db: AsyncSession, tenant_id: uuid.UUID, caller_id: uuid.UUID) -> Membership:
    """Lock the tenant (serialises membership changes) and return the caller's membership; 404 if none."""
    tenant = (await db.exec(select(Tenant).where(Tenant.id == tenant_id).with_for_update())).first()
    caller = await db.get(Membership, (tenant_id, caller_id)) if tenant is not None else None
    if caller is None:
        raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
    return caller


async def _owner_count(db: AsyncSession, tenant_id: uuid.UUID) -> int:
    return (
        await db.exec(
            select(func.count())
            .select_from(Membership)
            .where(Membership.tenant_id == tenant_id, Membership.role == "owner")
        )
    ).one()


@router.get(
    "",
    response_model=list[MemberView],
    summary="Members of a tenant",
    description="Any member may list the members.",
    responses=problem_responses(401, 404, 422),
)
async def list_members(tenant_id: TenantIdPath, member: TenantMember, engine: DbDep) -> list[MemberView]:
    async with transaction(engine, tenant_id=tenant_id, user_id=member.user_id) as db:
        rows = (
            await db.exec(
                select(Membership, User)
                .join(User, col(User.id) == Membership.user_id)
                .where(Membership.tenant_id == tenant_id)
                .order_by(col(Membership.created_at), col(Membership.user_id))
            )
        ).all()
    return [_view(m, u) for m, u in rows]


@router.patch(
    "/{user_id}",
    response_model=MemberView,
    summary="Change a member's role",
    description="Owners and admins; only an owner may grant or take away `owner`; the last owner cannot be "
    "demoted (409 `last-owner`). Records `member.role_changed`.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
)
async def change_role(
    tenant_id: TenantIdPath,
    user_id: UserIdPath,
    body: ChangeRoleRequest,
    caller: CurrentUser,
    engine: DbDep,
    response: Response,
) -> MemberView:
    event = None
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        me = await _lock(db, tenant_id, caller.user_id)
        if me.role not in MANAGER_ROLES:
            raise Problem(FORBIDDEN, "Only an owner or admin of this tenant may change roles.")
        target = await db.get(Membership, (tenant_id, user_id))
        if target is None:
            raise Problem(NOT_FOUND, MEMBER_NOT_FOUND)
        if "owner" in (body.role, target.role) and me.role != "owner" and target.role != body.role:
            raise Problem(FORBIDDEN, "Only an owner may grant or take away the owner role.")
        previous = target.role
        if previous != body.role:
            if previous == "owner" and await _owner_count(db, tenant_id) <= 1:
                raise Problem(LAST_OWNER, "This is the tenant's last owner; make someone else owner first.")
            target.role = body.role
            db.add(target)
            event = record_event(
                db,
                "member.role_changed",
                "tenant",
                tenant_id,
                {"user_id": str(user_id), "from": previous, "to": body.role, "by": str(caller.user_id)},
                tenant_id=tenant_id,
                user_id=user_id,
                actor_id=caller.user_id,
            )
        user = await db.get(User, user_id)
    if event is not None:  # read-your-writes: send it back as Consistent-After
        response.headers["Event-Position"] = str(event.id)
    if previous != body.role:
        log.info("member role changed", extra={"tenant_id": str(tenant_id), "user_id": str(user_id)})
    assert user is not None  # memberships cascade with their user
    return _view(target, user)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove a member, or leave the tenant",
    description="Owners and admins remove others (admins cannot remove owners); anyone may remove themselves "
    "(leave). The last owner can neither leave nor be removed (409 `last-owner`). Records "
    "`member.removed`.",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def remove_member(tenant_id: TenantIdPath, user_id: UserIdPath, caller: CurrentUser, engine: DbDep) -> Response:
    leaving = user_id == caller.user_id
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        me = await _lock(db, tenant_id, caller.user_id)
        target: Membership | None
        if leaving:
            target = me
        else:
            if me.role not in MANAGER_ROLES:
                raise Problem(FORBIDDEN, "Only an owner or admin of this tenant may remove members.")
            target = await db.get(Membership, (tenant_id, user_id))
            if target is None:
                raise Problem(NOT_FOUND, MEMBER_NOT_FOUND)
            if target.role == "owner" and me.role != "owner":
                raise Problem(FORBIDDEN, "Only an owner may remove an owner.")
        if target.role == "owner" and await _owner_count(db, tenant_id) <= 1:
            raise Problem(LAST_OWNER, "This is the tenant's last owner; make someone else owner first.")
        role = target.role
        await db.delete(target)
        event = record_event(
            db,
            "member.removed",
            "tenant",
            tenant_id,
            {"user_id": str(user_id), "role": role, "by": str(caller.user_id), "left": leaving},
            tenant_id=tenant_id,
            user_id=user_id,
            actor_id=caller.user_id,
        )
    log.info(
        "member left" if leaving else "member removed", extra={"tenant_id": str(tenant_id), "user_id": str(user_id)}
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Event-Position": str(event.id)})

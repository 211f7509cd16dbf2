"""Dependencies as `Annotated` aliases, so route signatures read like sentences.

Everything long-lived (settings, engine, Redis, the Temporal connector, the session store) is created
once in the app's lifespan (`api.app`) and kept on `app.state`; these aliases hand it to routes.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.jwt_tokens import AccessTokenCodec, InvalidAccessToken
from api.login_throttle import DeviceCookies, LoginThrottle
from api.problems import (
    BEARER_CHALLENGE,
    BEARER_INVALID,
    FORBIDDEN,
    INVALID_ACCESS_TOKEN,
    NOT_FOUND,
    UNAUTHENTICATED,
    Problem,
)
from api.read_models import ReadModels
from api.sessions import SessionStore
from api.temporal_client import TemporalConnector
from models.db import transaction
from models.tables import Membership, User
from prognet.settings import Settings


# The request-scoped lookups below are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, one thread hop per dependency per request (a login has nine).
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def _redis(request: Request) -> Redis:
    return request.app.state.redis


async def _read_models(request: Request) -> ReadModels:
    return request.app.state.read_models


async def _connector(request: Request) -> TemporalConnector:
    return request.app.state.temporal


async def _sessions(request: Request) -> SessionStore:
    return request.app.state.sessions


async def _throttle(request: Request) -> LoginThrottle:
    return request.app.state.login_throttle


async def _device_cookies(request: Request) -> DeviceCookies:
    return request.app.state.device_cookies


async def _access_tokens(request: Request) -> AccessTokenCodec:
    return request.app.state.access_tokens


async def client_address(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> str:
    """The socket peer, unless it is a trusted proxy (TRUSTED_PROXIES): then the rightmost X-Forwarded-For
    entry that is not itself a trusted proxy. Entries left of it are whatever the client chose to send."""
    peer = request.client.host if request.client else ""
    trusted = settings.trusted_proxy_networks
    if not trusted:
        return peer

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    address = peer
    for hop in reversed(hops):
        if not is_trusted(address):
            break
        address = hop
    return address


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[AsyncEngine, Depends(_engine)]
RedisDep = Annotated[Redis, Depends(_redis)]
ReadModelsDep = Annotated[ReadModels, Depends(_read_models)]
ConsistentAfter = Annotated[
    int | None,
    Header(
        alias="Consistent-After",
        description="An `Event-Position` from a command's response: the answer reflects at least that event "
        "(waits up to a second for the read model, else reads the primary).",
    ),
]
TemporalConnectorDep = Annotated[TemporalConnector, Depends(_connector)]
SessionsDep = Annotated[SessionStore, Depends(_sessions)]
ThrottleDep = Annotated[LoginThrottle, Depends(_throttle)]
AccessTokensDep = Annotated[AccessTokenCodec, Depends(_access_tokens)]
DeviceCookiesDep = Annotated[DeviceCookies, Depends(_device_cookies)]
ClientAddress = Annotated[str, Depends(client_address)]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the user and the login session its access token belongs to."""

    user_id: uuid.UUID
    session_id: str


_bearer = HTTPBearer(auto_error=False, description="Access token from `POST /v1/auth/login`.")


async def current_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    tokens: AccessTokensDep,
    sessions: SessionsDep,
) -> Caller:
    if credentials is None:
        raise Problem(
            UNAUTHENTICATED, "Send an access token as `Authorization: Bearer <token>`.", headers=BEARER_CHALLENGE
        )
    try:
        claims = tokens.decode(credentials.credentials)
    except InvalidAccessToken:
        raise Problem(INVALID_ACCESS_TOKEN, "The access token is invalid or expired.", headers=BEARER_INVALID) from None
    if await sessions.user_of(claims.session_id) != claims.user_id:
        raise Problem(INVALID_ACCESS_TOKEN, "The session of this access token has ended.", headers=BEARER_INVALID)
    return Caller(user_id=claims.user_id, session_id=claims.session_id)


CurrentUser = Annotated[Caller, Depends(current_caller)]


# --- tenant membership ---------------------------------------------------------------------------------------

MANAGER_ROLES = frozenset({"owner", "admin"})
TENANT_NOT_FOUND = "No tenant with this id."


@dataclass(frozen=True)
class Member:
    """The caller as a member of the tenant named in the path."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: str

    @property
    def manages(self) -> bool:
        return self.role in MANAGER_ROLES


TenantIdPath = Annotated[uuid.UUID, Path(description="The tenant's id.")]


async def tenant_member(tenant_id: TenantIdPath, caller: CurrentUser, engine: DbDep) -> Member:
    """The caller's membership, read through row-level security; not a member → 404 (existence not confirmed)."""
    async with transaction(engine, tenant_id=tenant_id, user_id=caller.user_id) as db:
        membership = await db.get(Membership, (tenant_id, caller.user_id))
    if membership is None:
        raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
    return Member(tenant_id=tenant_id, user_id=caller.user_id, role=membership.role)


TenantMember = Annotated[Member, Depends(tenant_member)]


async def tenant_manager(member: TenantMember) -> Member:
    """An owner or admin of the tenant; a plain member already knows the tenant exists, so 403."""
    if not member.manages:
        raise Problem(FORBIDDEN, "Only an owner or admin of this tenant may do this.")
    return member


TenantManager = Annotated[Member, Depends(tenant_manager)]


# --- platform operators --------------------------------------------------------------------------------------

ADMIN_NOT_FOUND = "No resource at this path."


@dataclass(frozen=True)
class Operator:
    """A platform operator: a user whose `users.is_platform_admin` is set (`prognet admin grant EMAIL`)."""

    user_id: uuid.UUID


async def platform_admin(caller: CurrentUser, engine: DbDep) -> Operator:
    """The caller, if a platform admin. Anyone else who is logged in gets 404, word for word what an unknown
    path answers, so admin routes are not revealed to tenants' users (no token: 401 as everywhere).

    The flag is read on every request (not from the token), so revoking it takes effect at once.
    """
    async with transaction(engine) as db:
        user = await db.get(User, caller.user_id)
    if user is None or not user.is_platform_admin or user.status != "active":
        raise Problem(NOT_FOUND, ADMIN_NOT_FOUND)
    return Operator(user_id=caller.user_id)


PlatformAdmin = Annotated[Operator, Depends(platform_admin)]

"""Login, refresh-token rotation and logout."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, Response, status
from sqlalchemy import ColumnElement, func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from api.body_guard import require_json_body
from api.deps import (
    AccessTokensDep,
    ClientAddress,
    CurrentUser,
    DbDep,
    DeviceCookiesDep,
    SessionsDep,
    SettingsDep,
    ThrottleDep,
)
from api.login_throttle import DEVICE_COOKIE, DEVICE_COOKIE_MAX_AGE, Attempt, LoginThrottle, lock_noticed
from api.problems import (
    ACCOUNT_DISABLED,
    ACCOUNT_NOT_VERIFIED,
    INVALID_CREDENTIALS,
    INVALID_REFRESH_TOKEN,
    TOO_MANY_ATTEMPTS,
    Problem,
    problem_responses,
)
from api.schemas import LoginRequest, RefreshRequest, TokenPair
from api.security_events import audit_quietly
from api.sessions import RefreshOutcome
from models.db import standalone, transaction
from models.events import domain_event, insert_event, record_event
from models.tables import User
from prognet import passwords
from prognet.metrics import LOGINS

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/auth", tags=["auth"], dependencies=[Depends(require_json_body)])

_BAD_CREDENTIALS = "The email or password is incorrect."


def _by_email(email: str) -> ColumnElement[bool]:
    return func.lower(User.email) == email


@router.post(
    "/login",
    response_model=TokenPair,
    summary="Log in with email and password",
    description="A successful login sets a device cookie (`prognet_device`, HttpOnly, SameSite=Strict) bound to the "
    "account: failed logins from clients without it never throttle a client that presents it. 429 answers carry "
    '`Retry-After`, which grows with further failures. See the README\'s "Login throttling".',
    responses=problem_responses(400, 401, 403, 413, 415, 422, 429),
)
async def login(
    body: LoginRequest,
    response: Response,
    settings: SettingsDep,
    engine: DbDep,
    sessions: SessionsDep,
    throttle: ThrottleDep,
    device_cookies: DeviceCookiesDep,
    address: ClientAddress,
    tokens: AccessTokensDep,
    prognet_device: Annotated[str | None, Cookie(description="Device cookie from an earlier login.")] = None,
) -> TokenPair:
    email = body.email.strip().lower()
    password = body.password.get_secret_value()
    device_id = device_cookies.device_of(prognet_device, email)

    # The attempt counts as a failure from here on, until the password proves right (see LoginThrottle).
    attempt, retry_after = await throttle.reserve(email, address, device_id)
    if attempt is None:
        LOGINS.labels("throttled").inc()
        if await lock_noticed(throttle.redis, email, address, retry_after or 1):
            await _record_lock(engine, email, retry_after or 1)
        raise Problem(
            TOO_MANY_ATTEMPTS,
            "Too many failed logins; try again later.",
            headers={"Retry-After": str(retry_after)},
        )

    wrong_password = False
    try:
        async with standalone(engine) as db:  # one statement: no transaction around it
            user = (await db.execute(select(User.id, User.password_hash, User.status).where(_by_email(email)))).first()
        if user is None:
            await passwords.verify_against_dummy(settings, password)
            wrong_password = True
            raise Problem(INVALID_CREDENTIALS, _BAD_CREDENTIALS)
        if not await passwords.verify_password(settings, user.password_hash, password):
            log.info("login failed", extra={"user_id": str(user.id), "reason": "wrong_password"})
            wrong_password = True
            await audit_quietly(engine, "user.login_failed", user.id, {"reason": "wrong_password"})
            raise Problem(INVALID_CREDENTIALS, _BAD_CREDENTIALS)
        if user.status != "active":
            reason = "not_verified" if user.status == "pending" else "disabled"
            await audit_quietly(engine, "user.login_failed", user.id, {"reason": reason})
            if user.status == "pending":
                raise Problem(
                    ACCOUNT_NOT_VERIFIED,
                    "This account's email address is not verified yet; follow the link in the verification email.",
                )
            raise Problem(ACCOUNT_DISABLED, "This account cannot log in.")

        rehashed = False
        if passwords.needs_rehash(settings, user.password_hash):
            new_hash = await passwords.hash_password(settings, password)
            # only over the hash just verified: a password changed meanwhile is not overwritten with the old one
            upgrade = update(User).where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
            async with standalone(engine) as db:
                rehashed = (await db.execute(upgrade.values(password_hash=new_hash))).rowcount == 1
        # One round trip settles the throttle and creates the session: one MULTI, applied together (the throttle
        # and the session store share the API's Redis client, api/app.py).
        async with throttle.redis.pipeline(transaction=True) as pipe:
            throttle.queue_success(pipe, attempt, email, address, device_id)
            session = sessions.queue_create(pipe, user.id)
            await pipe.execute()
        try:
            async with standalone(engine) as db:
                logged_in = domain_event(
                    "user.logged_in", "user", user.id, {"session_id": session.session_id}, actor_id=user.id
                )
                await db.execute(insert_event(logged_in))
        except BaseException:
            await sessions.revoke(session.session_id)  # no session without its audit record
            raise
    except BaseException:
        LOGINS.labels("failure").inc()
        # Only a wrong password is the caller's failure; a refusal for another reason or an outage is not.
        if not wrong_password:
            await _release(throttle, attempt)
        raise

    LOGINS.labels("success").inc()
    response.set_cookie(
        DEVICE_COOKIE,
        prognet_device if device_id is not None and prognet_device else device_cookies.issue(email),
        max_age=DEVICE_COOKIE_MAX_AGE,
        path=router.prefix,
        secure=settings.environment != "development",
        httponly=True,
        samesite="strict",
    )
    log.info(
        "login succeeded",
        extra={"user_id": str(user.id), "session_id": session.session_id, "rehashed": rehashed},
    )
    return TokenPair(
        access_token=tokens.issue(user.id, session.session_id),
        refresh_token=session.refresh_token,
        expires_in=tokens.ttl_seconds,
    )


async def _record_lock(engine: AsyncEngine, email: str, retry_after: int) -> None:
    """`user.login_locked` for a known account (an unknown email leaves no trace)."""
    try:
        async with standalone(engine) as db:
            user_id = (await db.execute(select(User.id).where(_by_email(email)))).scalar()
    except Exception:
        log.warning("login lock not recorded", exc_info=True)
        return
    if user_id is not None:
        await audit_quietly(engine, "user.login_locked", user_id, {"retry_after_seconds": retry_after})


async def _release(throttle: LoginThrottle, attempt: Attempt) -> None:
    try:
        await throttle.release(attempt)
    except Exception:  # Redis is down too: the original error is the one to answer
        log.warning("login throttle slot not released", exc_info=True)


@router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Exchange a refresh token for a new token pair",
    description="Each refresh token works once. Presenting one that was already exchanged revokes the "
    "whole session (every token issued since that login).",
    responses=problem_responses(400, 401, 413, 415, 422),
)
async def refresh(body: RefreshRequest, engine: DbDep, sessions: SessionsDep, tokens: AccessTokensDep) -> TokenPair:
    rotation = await sessions.rotate(body.refresh_token)
    if rotation.outcome is RefreshOutcome.REUSED:
        log.warning("refresh token reuse; session revoked", extra={"session_id": rotation.session_id})
        if rotation.user_id is not None:
            await audit_quietly(
                engine,
                "user.session_family_revoked",
                rotation.user_id,
                {"session_id": rotation.session_id, "reason": "refresh_token_reused"},
            )
        raise Problem(
            INVALID_REFRESH_TOKEN, "This refresh token was already used; the session has been revoked. Log in again."
        )
    if rotation.outcome is not RefreshOutcome.ROTATED:
        raise Problem(INVALID_REFRESH_TOKEN, "The refresh token is invalid or expired. Log in again.")
    assert rotation.user_id is not None and rotation.session_id and rotation.refresh_token
    async with transaction(engine) as db:
        user = await db.get(User, rotation.user_id)
    if user is None or user.status != "active":
        await sessions.revoke(rotation.session_id)
        raise Problem(INVALID_REFRESH_TOKEN, "The refresh token is invalid or expired. Log in again.")
    return TokenPair(
        access_token=tokens.issue(rotation.user_id, rotation.session_id),
        refresh_token=rotation.refresh_token,
        expires_in=tokens.ttl_seconds,
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="End the current session",
    description="Revokes the session: its access and refresh tokens stop working.",
    responses=problem_responses(401, 503),
)
async def logout(caller: CurrentUser, sessions: SessionsDep, engine: DbDep) -> Response:
    await sessions.revoke(caller.session_id)  # first: a database outage must not keep the session alive
    async with transaction(engine, user_id=caller.user_id) as db:
        record_event(
            db, "user.logged_out", "user", caller.user_id, {"session_id": caller.session_id}, actor_id=caller.user_id
        )
    log.info("logged out", extra={"user_id": str(caller.user_id), "session_id": caller.session_id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)

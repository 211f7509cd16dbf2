"""Proving the current password before a change to the account (password, email address).

A wrong password counts in the login throttle's counters for the account and the client address, like a failed
login: an access token alone (a stolen one) cannot be used to guess the password faster than logging in could.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from api.deps import Caller
from api.login_throttle import LoginThrottle
from api.problems import CURRENT_PASSWORD_INCORRECT, NOT_FOUND, TOO_MANY_ATTEMPTS, Problem
from api.security_events import audit_quietly
from models.db import transaction
from models.tables import User
from prognet import passwords
from prognet.settings import Settings

log = logging.getLogger("prognet.api")


async def prove_current_password(
    settings: Settings, engine: AsyncEngine, throttle: LoginThrottle, address: str, caller: Caller, password: str
) -> User:
    """The caller's user row once `password` is theirs; else 403 (counted) or 429 (throttled, not verified)."""
    async with transaction(engine) as db:
        user = await db.get(User, caller.user_id)
    if user is None:
        raise Problem(NOT_FOUND, "This account no longer exists.")
    attempt, retry_after = await throttle.reserve(user.email, address, None)
    if attempt is None:
        raise Problem(
            TOO_MANY_ATTEMPTS, "Too many wrong passwords; try again later.", headers={"Retry-After": str(retry_after)}
        )
    try:
        right = await passwords.verify_password(settings, user.password_hash, password)
    except BaseException:
        await throttle.release(attempt)
        raise
    if not right:
        log.info("current password wrong", extra={"user_id": str(user.id)})
        await audit_quietly(engine, "user.login_failed", user.id, {"reason": "wrong_current_password"})
        raise Problem(CURRENT_PASSWORD_INCORRECT, "The current password is incorrect.")
    await throttle.release(attempt)
    return user

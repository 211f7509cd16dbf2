"""Security events about a user whose request is refused anyway (a failed login, a lock, a reused refresh token)."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from models.db import transaction
from models.events import record_event

log = logging.getLogger("prognet.api")


async def audit_quietly(engine: AsyncEngine, type: str, user_id: uuid.UUID, payload: dict[str, object]) -> None:
    """Record the event in its own transaction; a database failure must not turn the refusal (401, 403, 429)
    into a 503, so it is logged instead."""
    try:
        async with transaction(engine, user_id=user_id) as db:
            record_event(db, type, "user", user_id, payload, actor_id=user_id)
    except Exception:
        log.warning("security event not recorded", extra={"user_id": str(user_id), "event_type": type}, exc_info=True)

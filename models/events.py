"""Writing domain events: always inside the caller's transaction, next to the change they record."""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import DomainEvent


def record_event(
    session: AsyncSession,
    type: str,
    aggregate_type: str,
    aggregate_id: str | uuid.UUID,
    payload: dict[str, Any] | None = None,
    *,
    tenant_id: uuid.UUID | None = None,
    workflow_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    version: int = 1,
) -> DomainEvent:
    """`user_id` is the user the event concerns (their audit trail and stream); a user aggregate's own id by
    default. `actor_id` is whoever acted, when that is a user."""
    if user_id is None and aggregate_type == "user":
        user_id = uuid.UUID(str(aggregate_id))
    event = DomainEvent(
        type=type,
        aggregate_type=aggregate_type,
        aggregate_id=str(aggregate_id),
        payload=payload or {},
        tenant_id=tenant_id,
        workflow_id=workflow_id,
        actor_id=actor_id,
        user_id=user_id,
        version=version,
    )
    session.add(event)
    return event

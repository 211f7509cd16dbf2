"""Writing domain events: inside the caller's transaction, next to the change they record (or, an event that
records nothing else, as a statement of its own: `insert_event`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Insert, insert
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import DomainEvent


def domain_event(
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
    return DomainEvent(
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
    """`domain_event(...)` added to the session: written with the transaction's other changes."""
    event = domain_event(
        type,
        aggregate_type,
        aggregate_id,
        payload,
        tenant_id=tenant_id,
        workflow_id=workflow_id,
        actor_id=actor_id,
        user_id=user_id,
        version=version,
    )
    session.add(event)
    return event


def insert_event(event: DomainEvent) -> Insert:
    """The event as a statement of its own (`models.db.standalone`), for an event that records nothing else
    written at the time. The database numbers it (`id`, the relay's order)."""
    return insert(DomainEvent).values(event.model_dump(exclude={"id"}))

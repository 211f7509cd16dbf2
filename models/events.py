"""Writing domain events: inside the caller's transaction, next to the change they record (or, an event that
records nothing else, as a statement of its own: `insert_event`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

from sqlalchemy import Insert, insert
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import DomainEvent

P = ParamSpec("P")


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


def _added_to_the_session(build: Callable[P, DomainEvent]) -> Callable[Concatenate[AsyncSession, P], DomainEvent]:
    def add(session: AsyncSession, /, *args: P.args, **kwargs: P.kwargs) -> DomainEvent:
        event = build(*args, **kwargs)
        session.add(event)
        return event

    return add


# record_event(session, type, aggregate_type, aggregate_id, payload, ...): `domain_event(...)` added to the session,
# written with the transaction's other changes
record_event = _added_to_the_session(domain_event)


def insert_event(event: DomainEvent) -> Insert:
    """The event as a statement of its own (`models.db.standalone`), for an event that records nothing else
    written at the time. The database numbers it (`id`, the relay's order)."""
    return insert(DomainEvent).values(event.model_dump(exclude={"id"}))

"""The contract between the outbox relay and every stream consumer: stream names and the entry format.

The relay copies each committed `domain_events` row to `ALL_EVENTS`, to its tenant's stream and to the stream of
the user it concerns. An entry's fields are flat strings (Redis stream fields); `StreamEvent` reads and writes
them. Streams are capped copies: the table stays the source of truth.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

ALL_EVENTS = "events:all"


def backbone_client(url: str, *, socket_timeout: float, socket_connect_timeout: float) -> Redis:
    """A Redis client for the relay and the stream consumers that never retries a command by itself. redis-py
    can (a `Redis(host=…)` retries a dropped connection ten times by default), and an XREADGROUP whose reply was
    lost has already delivered its entries: retried, it reads the next ones and leaves those pending, unseen.
    Without the retry the caller sees the error, backs off, and reads its pending entries first."""
    return Redis.from_url(
        url, retry=Retry(NoBackoff(), 0), socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
    )


def tenant_stream(tenant_id: uuid.UUID | str) -> str:
    return f"events:tenant:{tenant_id}"


def user_stream(user_id: uuid.UUID | str) -> str:
    return f"events:user:{user_id}"


class StreamEvent(BaseModel):
    seq: int  # domain_events.id: unique, but not commit order (the stream's own order is)
    event_id: uuid.UUID  # the dedupe key of every consumer
    type: str
    version: int
    aggregate_type: str
    aggregate_id: str
    tenant_id: uuid.UUID | None
    user_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    workflow_id: str | None
    occurred_at: datetime
    payload: dict[str, Any]

    def streams(self) -> list[str]:
        """Every stream this event belongs on."""
        names = [ALL_EVENTS]
        if self.tenant_id is not None:
            names.append(tenant_stream(self.tenant_id))
        if self.user_id is not None:
            names.append(user_stream(self.user_id))
        return names

    def to_fields(self) -> dict[str, str]:
        return {
            "seq": str(self.seq),
            "event_id": str(self.event_id),
            "type": self.type,
            "version": str(self.version),
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "tenant_id": str(self.tenant_id or ""),
            "user_id": str(self.user_id or ""),
            "actor_id": str(self.actor_id or ""),
            "workflow_id": self.workflow_id or "",
            "occurred_at": self.occurred_at.isoformat(),
            "payload": json.dumps(self.payload, separators=(",", ":"), sort_keys=True),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str] | dict[bytes, bytes]) -> StreamEvent:
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls(
            seq=int(f["seq"]),
            event_id=uuid.UUID(f["event_id"]),
            type=f["type"],
            version=int(f["version"]),
            aggregate_type=f["aggregate_type"],
            aggregate_id=f["aggregate_id"],
            tenant_id=uuid.UUID(f["tenant_id"]) if f.get("tenant_id") else None,
            user_id=uuid.UUID(f["user_id"]) if f.get("user_id") else None,
            actor_id=uuid.UUID(f["actor_id"]) if f.get("actor_id") else None,
            workflow_id=f.get("workflow_id") or None,
            occurred_at=datetime.fromisoformat(f["occurred_at"]),
            payload=json.loads(f["payload"]),
        )

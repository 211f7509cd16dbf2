"""CQRS read models: what the projector (workers.consumers) and `prognet events replay` (workers.replay) apply
for each event, and the cache keys the API and the cache invalidator share.

Each projection owns its tables and applies an event with plain SQL on one connection, inside the caller's
transaction, into the tables named in `tables` (the live ones, or a rebuild's fresh copies). It is idempotent by
event id: `mark_applied` inserts (projection, event_id) into `rm_applied` in the same transaction, and an event
already there is skipped. Only version-1 events are understood; a newer version is refused (`UnsupportedVersion`)
so the consumer parks it with that reason instead of guessing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.event_stream import StreamEvent

log = logging.getLogger("prognet.read_models")

SUPPORTED_VERSION = 1


class UnsupportedVersion(Exception):
    pass


def cache_key(resource: str, resource_id: uuid.UUID | str) -> str:
    """One cached read model entry: `tenant_overview` is keyed by tenant id, `user_profile` by user id."""
    return f"cache:{resource}:{resource_id}"


def cache_floor_key(key: str) -> str:
    """The lowest event position an entry of `key` may be cached at: raised by the cache invalidator, so a reader
    that read the row before the projector applied an event cannot put that older row back into the cache. (A
    profile's row does not move for membership events: after one, that profile is read uncached until the floor
    expires.)"""
    return f"cache-floor:{key.removeprefix('cache:')}"


# KEYS: entry, its floor. ARGV: value, TTL ms, the row's last_seq. Stored only at or above the floor.
STORE_IF_CURRENT = """
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) < floor then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: entries and their floors, alternating. ARGV: the event's position, the floors' TTL ms.
INVALIDATE = """
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  local floor = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if tonumber(ARGV[1]) > floor then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  else
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
  end
end
return 1
"""


@dataclass(frozen=True)
class Projection:
    name: str
    tables: tuple[str, ...]  # live table names; a rebuild maps each to a fresh copy

    def concerns(self, event: StreamEvent) -> bool:
        raise NotImplementedError

    def scope(self, tenant_id: uuid.UUID | None) -> str:
        """SQL condition on domain_events selecting the events a rebuild of one tenant replays."""
        return "tenant_id = :tenant" if tenant_id else "true"

    async def apply(self, conn: AsyncConnection, event: StreamEvent, t: Mapping[str, str]) -> None:
        raise NotImplementedError


async def mark_applied(conn: AsyncConnection, projection: str, event: StreamEvent) -> bool:
    """Record the event as applied to `projection`; False if it already was (then it must not be applied again)."""
    row = await conn.execute(
        text(
            "INSERT INTO rm_applied (projection, event_id, seq) VALUES (:p, :e, :s) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"p": projection, "e": event.event_id, "s": event.seq},
    )
    return row.first() is not None


def _check_version(event: StreamEvent) -> None:
    if event.version > SUPPORTED_VERSION:
        raise UnsupportedVersion(f"{event.type} version {event.version} (this projector reads {SUPPORTED_VERSION})")


def _uuid(value: object) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


class TenantOverview(Projection):
    """Per tenant: name, slug, status, billing configuration, member count, plan and subscription status, last
    invoice, open dead letters. Every event of the tenant moves `last_seq`."""

    def concerns(self, event: StreamEvent) -> bool:
        return event.tenant_id is not None

    async def apply(self, conn: AsyncConnection, event: StreamEvent, t: Mapping[str, str]) -> None:
        _check_version(event)
        ov, members, dead = t["rm_tenant_overview"], t["rm_tenant_member"], t["rm_tenant_dead_letter"]
        p, kind = event.payload, event.type
        args: dict[str, object] = {"tenant": event.tenant_id, "seq": event.seq, "at": event.occurred_at}

        async def update(assignments: str = "", **extra: object) -> None:
            """Change the tenant's row. Without one (its `tenant.created` not applied yet), a partial row is
            started first, which `tenant.created` completes: applied in any order, the events end in one row."""
            sets = ", ".join(filter(None, (assignments, "last_seq = :seq", "updated_at = now()")))
            change = text(f"UPDATE {ov} SET {sets} WHERE tenant_id = :tenant")
            if (await conn.execute(change, {**args, **extra})).rowcount:
                return
            log.warning("tenant overview: %s (seq %s) came before its tenant's row", kind, event.seq)
            await conn.execute(
                text(
                    f"INSERT INTO {ov} (tenant_id, status, last_seq) VALUES (:tenant, 'provisioning', :seq) "
                    "ON CONFLICT (tenant_id) DO NOTHING"
                ),
                args,
            )
            await conn.execute(change, {**args, **extra})

        async def recount() -> None:
            await update(
                f"member_count = (SELECT count(*) FROM {members} WHERE tenant_id = :tenant), "
                f"open_dead_letters = (SELECT count(*) FROM {dead} WHERE tenant_id = :tenant)"
            )

        if kind == "tenant.created":  # completes a partial row, whose status is already newer than this event
            await conn.execute(
                text(
                    f"INSERT INTO {ov} AS o (tenant_id, name, slug, status, created_by, created_at, last_seq) "
                    "VALUES (:tenant, :name, :slug, 'provisioning', :by, :at, :seq) ON CONFLICT (tenant_id) DO UPDATE "
                    "SET name = excluded.name, slug = excluded.slug, created_by = excluded.created_by, "
                    "created_at = excluded.created_at, updated_at = now() WHERE o.name IS NULL"
                ),
                {**args, "name": p.get("name"), "slug": p.get("slug"), "by": _uuid(p.get("created_by"))},
            )
        elif kind == "tenant.provisioned":
            await update("status = 'active', activated_at = :at")
        elif kind in ("tenant.failed", "tenant.suspended"):
            await update("status = :status, failure_reason = :reason", status=kind[7:], reason=p.get("reason"))
        elif kind == "tenant.reactivated":
            await update("status = 'active', failure_reason = NULL")
        elif kind == "tenant.discarded":
            for table in (ov, members, dead):
                await conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :tenant"), args)
        elif kind == "tenant.billing_configured":
            await update(
                "currency = :currency, billing_email = :email, stripe_customer_id = :customer",
                currency=p.get("currency"),
                email=p.get("billing_email"),
                customer=p.get("stripe_customer_id"),
            )
        elif kind == "member.added":
            await conn.execute(
                text(
                    f"INSERT INTO {members} (tenant_id, user_id, role) VALUES (:tenant, :user, :role) "
                    "ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role"
                ),
                {**args, "user": uuid.UUID(event.aggregate_id), "role": p.get("role", "member")},
            )
            await recount()
        elif kind == "member.removed":
            await conn.execute(
                text(f"DELETE FROM {members} WHERE tenant_id = :tenant AND user_id = :user"),
                {**args, "user": _uuid(p.get("user_id"))},
            )
            await recount()
        elif kind == "member.role_changed":
            await conn.execute(
                text(f"UPDATE {members} SET role = :role WHERE tenant_id = :tenant AND user_id = :user"),
                {**args, "user": _uuid(p.get("user_id")), "role": p.get("to")},
            )
            await update()
        elif kind.startswith("subscription."):
            await update(
                "subscription_id = :sub, plan = :plan, subscription_status = :status",
                sub=uuid.UUID(event.aggregate_id),
                plan=p.get("plan_id"),
                status=kind.split(".", 1)[1],
            )
        elif kind == "invoice.issued":
            await update(
                "last_invoice_id = :invoice, last_invoice_number = :number, last_invoice_amount = :amount, "
                "last_invoice_currency = :currency, last_invoice_status = 'open'",
                invoice=uuid.UUID(event.aggregate_id),
                number=p.get("number"),
                amount=p.get("amount"),
                currency=p.get("currency"),
            )
        elif kind in ("invoice.paid", "invoice.uncollectible", "invoice.voided"):
            status = {"invoice.paid": "paid", "invoice.uncollectible": "uncollectible", "invoice.voided": "void"}[kind]
            await update(
                "last_invoice_status = CASE WHEN last_invoice_id = :invoice THEN :status ELSE last_invoice_status END",
                invoice=uuid.UUID(event.aggregate_id),
                status=status,
            )
        elif kind == "email.dead_lettered":
            await conn.execute(
                text(f"INSERT INTO {dead} (tenant_id, message_id) VALUES (:tenant, :message) ON CONFLICT DO NOTHING"),
                {**args, "message": uuid.UUID(event.aggregate_id)},
            )
            await recount()
        elif kind in ("email.retry_requested", "email.discard_requested"):
            await conn.execute(
                text(f"DELETE FROM {dead} WHERE tenant_id = :tenant AND message_id = :message"),
                {**args, "message": uuid.UUID(event.aggregate_id)},
            )
            await recount()
        else:
            await update()  # not shown here, but the row has seen it


class UserProfile(Projection):
    """Per user: email, display name, status and verification, last login, and memberships with their roles."""

    def concerns(self, event: StreamEvent) -> bool:
        return event.user_id is not None or event.type in MEMBERSHIP_EVENTS

    def scope(self, tenant_id: uuid.UUID | None) -> str:
        return "tenant_id = :tenant" if tenant_id else "(user_id IS NOT NULL OR type IN :memberships)"

    async def apply(self, conn: AsyncConnection, event: StreamEvent, t: Mapping[str, str]) -> None:
        _check_version(event)
        profile, memberships = t["rm_user_profile"], t["rm_user_membership"]
        p, kind = event.payload, event.type
        args: dict[str, object] = {"user": event.user_id, "seq": event.seq, "at": event.occurred_at}

        async def update(assignments: str = "", **extra: object) -> None:
            sets = ", ".join(filter(None, (assignments, "last_seq = :seq", "updated_at = now()")))
            await conn.execute(text(f"UPDATE {profile} SET {sets} WHERE user_id = :user"), {**args, **extra})

        if kind == "user.registered":
            await conn.execute(
                text(
                    f"INSERT INTO {profile} (user_id, email, display_name, status, created_at, last_seq) "
                    "VALUES (:user, :email, :name, :status, :at, :seq) ON CONFLICT (user_id) DO NOTHING"
                ),
                {**args, "email": p.get("email", ""), "name": p.get("display_name"), "status": p.get("status")},
            )
        elif kind == "user.verified":
            await update("status = 'active', verified_at = :at")
        elif kind == "user.registration_expired":
            await conn.execute(text(f"DELETE FROM {profile} WHERE user_id = :user"), args)
        elif kind == "user.logged_in":
            await update("last_login_at = :at")
        elif kind == "user.profile_updated" and "display_name" in p.get("changes", {}):
            await update("display_name = :name", name=p["changes"]["display_name"]["new"])
        elif kind == "user.email_changed":
            await update("email = :email", email=p["email"])
        elif kind == "member.added":
            await conn.execute(
                text(
                    f"INSERT INTO {memberships} (user_id, tenant_id, role, joined_at) VALUES (:u, :tenant, :role, :at) "
                    "ON CONFLICT (user_id, tenant_id) DO UPDATE SET role = excluded.role"
                ),
                {
                    "u": uuid.UUID(event.aggregate_id),
                    "tenant": event.tenant_id,
                    "role": p.get("role"),
                    "at": event.occurred_at,
                },
            )
        elif kind == "member.removed":
            await conn.execute(
                text(f"DELETE FROM {memberships} WHERE user_id = :u AND tenant_id = :tenant"),
                {"u": _uuid(p.get("user_id")), "tenant": event.tenant_id},
            )
        elif kind == "member.role_changed":
            await conn.execute(
                text(f"UPDATE {memberships} SET role = :role WHERE user_id = :u AND tenant_id = :tenant"),
                {"u": _uuid(p.get("user_id")), "tenant": event.tenant_id, "role": p.get("to")},
            )
        elif kind == "tenant.discarded":
            await conn.execute(
                text(f"DELETE FROM {memberships} WHERE tenant_id = :tenant"), {"tenant": event.tenant_id}
            )
        elif event.user_id is not None:
            await update()


MEMBERSHIP_EVENTS = ("member.added", "member.removed", "member.role_changed", "tenant.discarded")

TENANT_OVERVIEW = TenantOverview("tenant_overview", ("rm_tenant_overview", "rm_tenant_member", "rm_tenant_dead_letter"))
USER_PROFILE = UserProfile("user_profile", ("rm_user_profile", "rm_user_membership"))
PROJECTIONS = {p.name: p for p in (TENANT_OVERVIEW, USER_PROFILE)}


def live_tables(projection: Projection) -> dict[str, str]:
    return {name: name for name in projection.tables}


def event_from_row(row: dict[str, Any]) -> StreamEvent:
    """A domain_events row (as selected by a rebuild) as the stream entry the relay would have published."""
    payload = row["payload"]
    return StreamEvent.model_validate({**row, "payload": json.loads(payload) if isinstance(payload, str) else payload})

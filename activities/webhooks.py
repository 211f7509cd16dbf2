"""Outbound webhook activities: the policy, the delivery row, one signed attempt, marking, disabling an endpoint.

Everything runs in the delivery's tenant scope (row-level security). The attempt is the only place a signing
secret is opened, and the only place the endpoint's URL is read: neither is returned, logged or raised.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from temporalio import activity

from models import activity_names as names
from models.contracts import (
    DisabledWebhookEndpoint,
    DisableWebhookEndpoint,
    MarkWebhookDelivery,
    WebhookAttempt,
    WebhookAttemptResult,
    WebhookDeliveryInput,
    WebhookPolicy,
)
from models.db import transaction
from models.events import record_event
from models.names import webhook_workflow_id
from models.tables import Membership, WebhookDelivery, WebhookEndpoint, utcnow
from prognet.settings import Settings
from webhooks import secret_box, signing
from webhooks.http_client import delivery_client, pinned
from webhooks.targets import TargetRefused, resolve

log = logging.getLogger(__name__)
BODY_LIMIT = 1024  # bytes of a receiver's answer kept in the delivery log
ERROR_LIMIT = 500


def encode_body(req: WebhookDeliveryInput) -> bytes:
    """The same bytes on every attempt (the receiver may compare them)."""
    return json.dumps(req.event.body(), separators=(",", ":"), sort_keys=True).encode()


class WebhookActivities:
    """Also an async context manager: leaving it closes the worker's one delivery client (`webhooks.http_client`),
    whose keep-alive connections every attempt reuses."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.key = settings.derived_key(secret_box.KEY_PURPOSE)
        self.http = delivery_client(settings.webhook_timeout_seconds)

    async def __aenter__(self) -> WebhookActivities:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    @activity.defn(name=names.WEBHOOK_POLICY)
    async def policy(self) -> WebhookPolicy:
        s = self.settings
        return WebhookPolicy(
            schedule_seconds=list(s.webhook_retry_schedule_seconds),
            timeout_seconds=s.webhook_timeout_seconds,
            disable_after_seconds=s.webhook_disable_after.total_seconds(),
        )

    @activity.defn(name=names.WEBHOOK_RECORD)
    async def record(self, req: WebhookDeliveryInput) -> bool:
        """The delivery's log row (once, however often this runs); false if the endpoint is gone."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            if await db.get(WebhookEndpoint, req.endpoint_id) is None:
                return False
            await db.exec(
                insert(WebhookDelivery)
                .values(
                    id=req.delivery_id,
                    tenant_id=req.tenant_id,
                    endpoint_id=req.endpoint_id,
                    event_id=req.event.id,
                    event_type=req.event.type,
                    workflow_id=webhook_workflow_id(req.delivery_id),
                    status="pending",
                    attempts=0,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
        return True

    @activity.defn(name=names.WEBHOOK_ATTEMPT)
    async def attempt(self, req: WebhookAttempt) -> WebhookAttemptResult:
        delivery = req.delivery
        async with transaction(self.engine, tenant_id=delivery.tenant_id) as db:
            endpoint = await db.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None:
            return WebhookAttemptResult(outcome="endpoint_gone")
        if not endpoint.enabled:
            return WebhookAttemptResult(outcome="endpoint_disabled")
        started = time.monotonic()
        try:
            target = await resolve(endpoint.url, allow_private=self.settings.allow_private_webhook_targets)
        except TargetRefused as refused:
            result = WebhookAttemptResult(outcome="refused", error=str(refused)[:ERROR_LIMIT])
            await self._record_attempt(req, result, None, started)
            return result
        body = encode_body(delivery)
        signed = signing.headers(self._secrets(endpoint), str(delivery.delivery_id), int(time.time()), body)
        answer: bytes | None = None
        try:
            # Connect only to the address that was checked (`pinned`); the URL keeps the name for Host, SNI and
            # the pool. Redirects are not followed: a 3xx is a failed attempt, never a hop to an unchecked address.
            with pinned(target):
                async with self.http.stream(
                    "POST",
                    target.url,
                    content=body,
                    headers={**signed, "content-type": "application/json", "user-agent": "ProgNetwork-Webhooks/1"},
                ) as response:
                    answer = await _read_capped(response)
                    code = response.status_code
            ok = 200 <= code < 300
            result = WebhookAttemptResult(outcome="delivered" if ok else "failed", status_code=code)
        except httpx.TimeoutException:
            result = WebhookAttemptResult(outcome="failed", error="timed out")
        except httpx.HTTPError as err:
            result = WebhookAttemptResult(outcome="failed", error=f"{type(err).__name__}: connection failed")
        result.disable = await self._record_attempt(req, result, answer, started)
        log.info(
            "webhook attempt",
            extra={
                "workflow_id": webhook_workflow_id(delivery.delivery_id),
                "tenant_id": str(delivery.tenant_id),
                "attempt": req.attempt,
                "outcome": result.outcome,
                "status_code": result.status_code,
            },
        )
        return result

    def _secrets(self, endpoint: WebhookEndpoint) -> list[str]:
        """The current secret, and the previous one while its overlap lasts."""
        found = [secret_box.open_(self.key, endpoint.id, endpoint.secret_sealed)]
        expires = endpoint.previous_secret_expires_at
        if endpoint.previous_secret_sealed and expires and expires > datetime.now(UTC):
            found.append(secret_box.open_(self.key, endpoint.id, endpoint.previous_secret_sealed))
        return found

    async def _record_attempt(
        self, req: WebhookAttempt, result: WebhookAttemptResult, answer: bytes | None, started: float
    ) -> bool:
        """The attempt in the delivery log and the endpoint's health; true when the endpoint should be disabled."""
        delivery = req.delivery
        ok = result.outcome == "delivered"
        now = utcnow()
        async with transaction(self.engine, tenant_id=delivery.tenant_id) as db:
            await db.exec(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.delivery_id)  # type: ignore[arg-type]
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    status="delivered" if ok else "pending",
                    last_status_code=result.status_code,
                    last_response_body=answer.decode("utf-8", "replace")[:BODY_LIMIT] if answer is not None else None,
                    last_error=result.error,
                    last_duration_ms=int((time.monotonic() - started) * 1000),
                    last_attempt_at=now,
                    next_attempt_at=None,
                    delivered_at=now if ok else None,
                    updated_at=now,
                )
            )
            endpoint = (
                await db.exec(
                    select(WebhookEndpoint).where(WebhookEndpoint.id == delivery.endpoint_id).with_for_update()
                )
            ).first()
            if endpoint is None:
                return False
            if ok:
                endpoint.failing_since = None
            elif endpoint.failing_since is None:
                endpoint.failing_since = now
            db.add(endpoint)
            return (
                not ok
                and endpoint.enabled
                and endpoint.failing_since is not None
                and now - endpoint.failing_since >= timedelta(seconds=req.disable_after_seconds)
            )

    @activity.defn(name=names.WEBHOOK_MARK)
    async def mark(self, req: MarkWebhookDelivery) -> None:
        values: dict = {"status": req.status, "next_attempt_at": req.next_attempt_at, "updated_at": utcnow()}
        if req.error is not None:
            values["last_error"] = req.error[:ERROR_LIMIT]
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            await db.exec(
                update(WebhookDelivery).where(WebhookDelivery.id == req.delivery_id).values(**values)  # type: ignore[arg-type]
            )

    @activity.defn(name=names.WEBHOOK_DISABLE_ENDPOINT)
    async def disable_endpoint(self, req: DisableWebhookEndpoint) -> DisabledWebhookEndpoint:
        """Disable once (the event and the owners' emails follow only the delivery that flipped it)."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            endpoint = (
                await db.exec(select(WebhookEndpoint).where(WebhookEndpoint.id == req.endpoint_id).with_for_update())
            ).first()
            if endpoint is None or not endpoint.enabled:
                return DisabledWebhookEndpoint(disabled=False)
            endpoint.enabled = False
            endpoint.disabled_reason = req.reason[:ERROR_LIMIT]
            endpoint.updated_at = utcnow()
            db.add(endpoint)
            failing_since = endpoint.failing_since or endpoint.updated_at
            record_event(
                db,
                "webhook_endpoint.disabled",
                "webhook_endpoint",
                endpoint.id,
                {"reason": endpoint.disabled_reason, "failing_since": failing_since.isoformat()},
                tenant_id=req.tenant_id,
                workflow_id=activity.info().workflow_id,
            )
            owners = (
                await db.exec(
                    select(Membership.user_id).where(Membership.tenant_id == req.tenant_id, Membership.role == "owner")
                )
            ).all()
        return DisabledWebhookEndpoint(
            disabled=True, owner_ids=sorted(owners), url_host=urlsplit(endpoint.url).hostname or None
        )


async def _read_capped(response: httpx.Response) -> bytes:
    """At most BODY_LIMIT bytes of the answer: a receiver cannot make us hold a large body."""
    kept = b""
    async for chunk in response.aiter_bytes():
        kept += chunk[: BODY_LIMIT - len(kept)]
        if len(kept) >= BODY_LIMIT:
            break
    return kept

"""`POST /v1/webhooks/stripe`: Stripe's events, verified, deduplicated and handed to the owning workflow.

The endpoint only routes: it verifies the `Stripe-Signature` header with the `stripe` SDK (current or
previous endpoint secret, signed within 300 s of now, past or future), claims the event id in Redis for 7
days, signals the billing cycle named by the PaymentIntent's `metadata.workflow_id`, and answers. It never
waits for a workflow and never starts one: a webhook that could start a billing cycle could make us charge.
A success to a cycle in its charge call, or just out of it with that success (`models.names.charging_key`), is not
signalled.

Stripe delivers at least once and in any order; the dedupe key drops repeats here, and the billing cycle
itself keeps a success over a later failure, so neither duplicates nor reordering change an outcome.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import stripe
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import RedisDep, SettingsDep, TemporalConnectorDep
from api.problems import (
    BAD_REQUEST,
    CACHE_UNAVAILABLE,
    MALFORMED_JSON,
    SERVICE_UNAVAILABLE,
    Problem,
    ProblemType,
    problem_responses,
)
from api.temporal_client import TemporalConnector
from models.billing_cycle_contracts import PaymentOutcome
from models.names import SIGNAL_PAYMENT_OUTCOME, STRIPE_PAYMENT_OUTCOMES, charging_key
from prognet.settings import Settings

log = logging.getLogger("prognet.api.stripe_webhooks")

router = APIRouter(tags=["webhooks"], dependencies=[Depends(require_json_body)])

TOLERANCE_SECONDS = 300
DEDUPE_TTL_SECONDS = 7 * 24 * 3600  # longer than Stripe's 3 days of retries
DEDUPE_PREFIX = "stripe:webhook:event:"
SIGNAL_TIMEOUT = timedelta(seconds=5)  # Stripe gives up on a slow endpoint; an unanswered signal is a 503
BILLING_PREFIX = "billing-"  # the only workflows a webhook may reach


class StripeWebhookReceipt(BaseModel):
    received: bool = True
    duplicate: bool | None = None  # set (true) only for an event id already received
    routed: bool | None = None  # whether a workflow was signalled


@dataclass(frozen=True)
class Route:
    """Where an event goes: a workflow and its signal, or nowhere (with the reason, for the log)."""

    workflow_id: str | None = None
    outcome: PaymentOutcome | None = None
    skip_reason: str | None = None


def dedupe_key(event_id: str) -> str:
    return DEDUPE_PREFIX + event_id


def _secrets(settings: Settings) -> list[str]:
    return [
        s.get_secret_value()
        for s in (settings.stripe_webhook_secret, settings.stripe_webhook_secret_previous)
        if s is not None and s.get_secret_value()
    ]


def signature_problem(payload: str, header: str | None, secrets: list[str]) -> str | None:
    """None when `header` signs `payload` with one of `secrets` within the tolerance, else why not.

    The signature is checked first without the tolerance, so the log can tell a stale delivery (a clock or
    queue problem) from a forged one."""
    if not header:
        return "missing Stripe-Signature header"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        # the SDK's tolerance bounds only the past: a timestamp from the future would stay valid indefinitely
        age = time.time() - _timestamp(header)
        if age > TOLERANCE_SECONDS:
            return f"signature older than {TOLERANCE_SECONDS} s"
        if age < -TOLERANCE_SECONDS:
            return f"signature more than {TOLERANCE_SECONDS} s in the future"
        return None
    return "no signature made with a current or previous webhook secret"


def _timestamp(header: str) -> int:
    """The `t=` of a header the SDK already verified (so it has exactly one valid one)."""
    return next(int(value) for key, _, value in (item.partition("=") for item in header.split(",")) if key == "t")


def _parse(payload: str) -> dict[str, Any]:
    """The event, if it has the shape every Stripe event has; else ValueError."""
    event = json.loads(payload)
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise ValueError("no event id")
    if not isinstance(event.get("type"), str):
        raise ValueError("no event type")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError("no data.object")
    return event


def route_of(event: dict[str, Any]) -> Route:
    status = STRIPE_PAYMENT_OUTCOMES.get(event["type"])
    if status is None:
        return Route(skip_reason="event type not routed")
    intent = event["data"]["object"]
    metadata = intent.get("metadata") if isinstance(intent.get("metadata"), dict) else {}
    workflow_id = metadata.get("workflow_id")
    if not isinstance(workflow_id, str) or not workflow_id.startswith(BILLING_PREFIX):
        # PaymentIntents made elsewhere (the dashboard, another integration) or aimed at a non-billing workflow
        return Route(
            workflow_id=workflow_id if isinstance(workflow_id, str) else None,
            skip_reason="metadata.workflow_id names no billing cycle",
        )
    error = intent.get("last_payment_error")
    decline_code = (error.get("decline_code") or error.get("code")) if isinstance(error, dict) else None
    outcome = PaymentOutcome(
        payment_intent_id=intent.get("id"), status=status, decline_code=decline_code, event_id=event["id"]
    )
    return Route(workflow_id=workflow_id, outcome=outcome)


def _reject(request: Request, kind: ProblemType, detail: str, reason: str) -> Problem:
    # never the payload, the header or a secret: only why, and where the request came from
    log.warning("stripe webhook rejected", extra={"reason": reason, "client": getattr(request.client, "host", None)})
    return Problem(kind, detail)


@router.post(
    "/v1/webhooks/stripe",
    response_model=StripeWebhookReceipt,
    response_model_exclude_none=True,
    summary="Receive a Stripe event",
    description="Stripe's webhook endpoint. The raw JSON body must carry a valid `Stripe-Signature` (current or "
    f"previous endpoint secret, signed within {TOLERANCE_SECONDS} s of now, past or future). Each event id is "
    "handled once (`duplicate: true` afterwards). `payment_intent.succeeded` and `payment_intent.payment_failed` "
    "are signalled to the billing cycle named in the PaymentIntent's `metadata.workflow_id` "
    "(`routed: false` when it is not running, or for a success while it is in its own charge call, which "
    "answers it); other events are acknowledged and not routed. "
    "A 503 means the event was not handled: Stripe retries it.",
    responses=problem_responses(400, 413, 415, 503),
)
async def receive_stripe_event(
    request: Request, settings: SettingsDep, redis: RedisDep, temporal: TemporalConnectorDep
) -> StripeWebhookReceipt:
    secrets = _secrets(settings)
    if not secrets:
        log.error("stripe webhook received but STRIPE_WEBHOOK_SECRET is not set")
        raise Problem(SERVICE_UNAVAILABLE, "Webhooks cannot be verified right now.", headers={"Retry-After": "60"})
    try:
        payload = (await request.body()).decode("utf-8")  # the signature covers these exact bytes
    except UnicodeDecodeError:
        raise _reject(request, MALFORMED_JSON, "The event body is not UTF-8 JSON.", "body is not UTF-8") from None
    reason = signature_problem(payload, request.headers.get("stripe-signature"), secrets)
    if reason is not None:
        raise _reject(request, BAD_REQUEST, "The Stripe-Signature header is missing, invalid or too old.", reason)
    try:
        event = _parse(payload)
        route = route_of(event)
    except (ValueError, ValidationError) as exc:  # json.JSONDecodeError is a ValueError
        raise _reject(
            request, MALFORMED_JSON, "The event body is not a Stripe event.", f"malformed event: {type(exc).__name__}"
        ) from None
    context = {"event_id": event["id"], "event_type": event["type"], "workflow_id": route.workflow_id}

    key = dedupe_key(event["id"])
    outcome = route.outcome
    try:
        async with redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.set(key, event["type"], nx=True, ex=DEDUPE_TTL_SECONDS)
            if outcome is not None and outcome.status == "succeeded" and route.workflow_id is not None:
                pipe.exists(charging_key(route.workflow_id))
            first_time, *noted = await pipe.execute()
    except RedisError as exc:
        log.warning("stripe webhook: redis unavailable", extra={**context, "error": type(exc).__name__})
        raise Problem(
            CACHE_UNAVAILABLE, "The event could not be recorded; retry later.", headers={"Retry-After": "5"}
        ) from None
    if not first_time:
        log.info("stripe webhook duplicate", extra=context)
        return StripeWebhookReceipt(duplicate=True)
    if outcome is None:
        log.info("stripe webhook not routed", extra={**context, "reason": route.skip_reason})
        return StripeWebhookReceipt(routed=False)
    if noted and noted[0]:
        reason = "the cycle has this success from its own charge call"
        log.info("stripe webhook not routed", extra={**context, "reason": reason})
        return StripeWebhookReceipt(routed=False)

    try:
        routed = await _signal(temporal, route)
    except BaseException:
        # not handled: free the event id so Stripe's retry is handled (the 503/500 is the problem handlers')
        await redis.delete(key)
        raise
    if not routed:
        # the cycle ended or never existed; its polling fallback settles any payment it still waits for
        log.info("stripe webhook not routed", extra={**context, "reason": "workflow not running"})
        return StripeWebhookReceipt(routed=False)
    log.info("stripe webhook routed", extra=context)
    return StripeWebhookReceipt(routed=True)


async def _signal(temporal: TemporalConnector, route: Route) -> bool:
    """Signal the running workflow (never signal-with-start); False when it is not running."""
    assert route.workflow_id is not None, "route_of gives an outcome only with its billing workflow's id"
    client = await temporal.get()
    handle = client.get_workflow_handle(route.workflow_id)
    try:
        await handle.signal(SIGNAL_PAYMENT_OUTCOME, route.outcome, rpc_timeout=SIGNAL_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True

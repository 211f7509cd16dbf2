"""Billing side effects in Stripe, through the official `stripe` SDK.

The same code talks to api.stripe.com in production and to the dev stack's Stripe sandbox (STRIPE_API_BASE).
The SDK never retries (`max_network_retries=0`): Temporal owns retries. Stripe's answers are split in two:
- permanent (card declined, invalid request, bad/unauthorised key, idempotency-key misuse) → a non-retryable
  `ApplicationError(type="StripePermanentError")` whose message names Stripe's error class and code — never the key,
  never Stripe's free-text message (it can echo an email address);
- temporary (rate limit, network, 5xx) → re-raised as is, so the activity's retry policy applies.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, NoReturn
from uuid import UUID

import stripe
from redis.asyncio import Redis
from redis.exceptions import RedisError
from stripe.params import CustomerCreateParams, PaymentIntentCreateParams
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.circuits import BreakerHttpClient
from models import activity_names as names
from models.billing_contracts import CreateStripeCustomer, DeleteStripeCustomer, StripeCustomer
from models.billing_cycle_contracts import (
    REFUSED_PAYMENT_PREFIX,
    CreatePaymentIntent,
    PaymentIntentInfo,
    PaymentIntentRef,
    Refunded,
    RefundPayment,
)
from models.errors import STRIPE_PERMANENT_ERROR
from models.names import CHARGING_TTL_SECONDS, charging_key
from prognet.circuit import CircuitBreaker
from prognet.metrics import PAYMENTS_DECLINED, PAYMENTS_SUCCEEDED
from prognet.settings import Settings

log = logging.getLogger(__name__)

PERMANENT_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.CardError,
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.IdempotencyError,
)


STRIPE_TIMEOUT_SECONDS = 20  # below the activities' start-to-close timeout: a hung Stripe counts as down


def stripe_client(settings: Settings, breaker: CircuitBreaker | None = None) -> stripe.StripeClient:
    """A StripeClient for STRIPE_API_BASE (api.stripe.com unless set) with no SDK-level retries; with a
    breaker, every request goes through the Stripe circuit."""
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    if not key:
        raise ApplicationError("STRIPE_SECRET_KEY is not set", type=STRIPE_PERMANENT_ERROR, non_retryable=True)
    http_client = BreakerHttpClient(breaker, timeout=STRIPE_TIMEOUT_SECONDS) if breaker is not None else None
    return stripe.StripeClient(
        key, base_addresses={"api": settings.stripe_base}, max_network_retries=0, http_client=http_client
    )


def _raise_translated(exc: stripe.StripeError, action: str) -> NoReturn:
    """Permanent Stripe errors become non-retryable ApplicationErrors; the rest propagate for Temporal to retry."""
    if not isinstance(exc, PERMANENT_ERRORS):
        raise exc
    error = exc.error
    facts: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "code": exc.code or (error.code if error is not None else None),
        "type": error.type if error is not None else None,
        "param": error.param if error is not None else None,
        "decline_code": error.decline_code if error is not None else None,
        "http_status": exc.http_status,
        "request_id": exc.request_id,
    }
    shown = ", ".join(f"{k}={v}" for k, v in facts.items() if v is not None and k != "error_class")
    raise ApplicationError(
        f"Stripe refused to {action}: {facts['error_class']} ({shown})",
        {k: v for k, v in facts.items() if v is not None},
        type=STRIPE_PERMANENT_ERROR,
        non_retryable=True,
    ) from None


FAILED_STATES = ("requires_payment_method", "canceled")
CANCELABLE_STATES = (
    "requires_action",
    "requires_confirmation",
    "requires_capture",
)  # Stripe cannot cancel `processing`
TEST_PAYMENT_METHOD_PREFIX = "pm_card_"


def _refused(req: CreatePaymentIntent, code: str | None) -> PaymentIntentInfo:
    """An attempt Stripe refused before creating a PaymentIntent (no such card): a failed attempt all the same."""
    log.info("payment method refused", extra={"tenant_id": str(req.tenant_id), "code": code})
    PAYMENTS_DECLINED.labels(code or "invalid_payment_method").inc()
    return PaymentIntentInfo(
        payment_intent_id=f"{REFUSED_PAYMENT_PREFIX}{req.idempotency_key}",
        status="failed",
        decline_code=code or "invalid_payment_method",
    )


def _payment_info(pi: Any) -> PaymentIntentInfo:
    """Stripe's PaymentIntent states folded into what a billing cycle acts on."""
    if pi.status == "succeeded":
        return PaymentIntentInfo(payment_intent_id=pi.id, status="succeeded")
    if pi.status in FAILED_STATES:
        error = pi.last_payment_error
        code = (error.decline_code or error.code) if error is not None else pi.status
        return PaymentIntentInfo(payment_intent_id=pi.id, status="failed", decline_code=code)
    return PaymentIntentInfo(payment_intent_id=pi.id, status="pending")  # processing, requires_action, …


class BillingActivities:
    def __init__(
        self,
        settings: Settings,
        *,
        client: stripe.StripeClient | None = None,
        breaker: CircuitBreaker | None = None,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self.breaker = breaker
        self.redis = redis  # where charges are noted for the webhook endpoint (none: every webhook is signalled)

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = stripe_client(self.settings, self.breaker)
        return self._client

    @activity.defn(name=names.CREATE_STRIPE_CUSTOMER)
    async def create_stripe_customer(self, req: CreateStripeCustomer) -> StripeCustomer:
        """Create the tenant's Stripe customer. The caller's idempotency key makes a retry (even after the response
        was lost) return the customer the first attempt created, for as long as Stripe keeps the key (24 h)."""
        params: CustomerCreateParams = {"name": req.name, "metadata": {"tenant_id": str(req.tenant_id)}}
        if req.email:
            params["email"] = req.email
        try:
            customer = await self.client.v1.customers.create_async(
                params=params, options={"idempotency_key": req.idempotency_key}
            )
        except stripe.StripeError as exc:
            _raise_translated(exc, "create the customer")
        log.info("stripe customer ready", extra={"tenant_id": str(req.tenant_id), "customer_id": customer.id})
        return StripeCustomer(customer_id=customer.id)

    @activity.defn(name=names.DELETE_STRIPE_CUSTOMER)
    async def delete_stripe_customer(self, req: DeleteStripeCustomer) -> None:
        """Compensation: delete the tenant's customer. A customer already gone counts as deleted. Without a
        customer id (the create's answer was lost), the tenant's customers are found by their `tenant_id`
        metadata (Stripe's search is eventually consistent: a customer created seconds ago may be missed on
        api.stripe.com; the sandbox is consistent)."""
        ids = [req.customer_id] if req.customer_id else await self._customers_of(req.tenant_id)
        for customer_id in ids:
            try:
                await self.client.v1.customers.delete_async(customer_id)
            except stripe.InvalidRequestError as exc:
                if exc.code == "resource_missing" or exc.http_status == 404:
                    continue  # deleted before (a retry) or never existed
                _raise_translated(exc, "delete the customer")
            except stripe.StripeError as exc:
                _raise_translated(exc, "delete the customer")
            log.info("stripe customer deleted", extra={"tenant_id": str(req.tenant_id), "customer_id": customer_id})

    async def _customers_of(self, tenant_id: UUID) -> list[str]:
        try:
            found = await self.client.v1.customers.search_async(
                params={"query": f"metadata['tenant_id']:'{tenant_id}'", "limit": 100}
            )
        except stripe.StripeError as exc:
            _raise_translated(exc, "search the tenant's customers")
        return [c.id for c in found.data]

    @activity.defn(name=names.CREATE_PAYMENT_INTENT)
    async def create_payment_intent(self, req: CreatePaymentIntent) -> PaymentIntentInfo:
        """`_create_payment_intent`, stamped with the time of its answer."""
        # Noted before the call: the event can arrive before the answer is back (the dev sandbox sends it so).
        await self._note_charging(req.workflow_id, on=True)
        info: PaymentIntentInfo | None = None
        try:
            info = await self._create_payment_intent(req)
        finally:
            if info is None or info.status != "succeeded":  # the cycle waits on: Stripe's events must reach it
                await self._note_charging(req.workflow_id, on=False)
        return info.model_copy(update={"answered_at": datetime.now(UTC)})

    async def _note_charging(self, workflow_id: str, *, on: bool) -> None:
        """Tell the webhook endpoint not to signal a success to this cycle while it charges and once it has its
        success (`models.names.charging_key`); `on=False` takes that back. Only a success is held back: after a
        decline or a pending answer the cycle waits, and Stripe's events reach it. Best effort: without the note
        the webhook is signalled, as it always was, and changes nothing; a note left behind by a crash only
        holds back a success the cycle gets from the same call's replay (its idempotency key) or its polling."""
        if self.redis is None:
            return
        key = charging_key(workflow_id)
        try:
            await (self.redis.set(key, 1, ex=CHARGING_TTL_SECONDS) if on else self.redis.delete(key))
        except (RedisError, OSError) as exc:
            log.warning("charge not noted for the webhook endpoint", extra={"error": type(exc).__name__})

    async def _create_payment_intent(self, req: CreatePaymentIntent) -> PaymentIntentInfo:
        """Create and confirm off-session. A decline is an answer (status failed + Stripe's decline code), not an
        activity failure; so is a payment method Stripe will not use (unknown, or another customer's): the
        customer can change it and dunning goes on. The idempotency key makes a retried activity replay
        Stripe's first answer instead of charging again."""
        refusal = await self._attach(req)
        if refusal is not None:
            return refusal
        params: PaymentIntentCreateParams = {
            "amount": req.amount,
            "currency": req.currency,
            "customer": req.stripe_customer_id,
            "payment_method": req.payment_method,
            "confirm": True,
            "off_session": True,
            "description": f"invoice {req.invoice_id}",
            # the webhook endpoint routes this intent's events to `workflow_id`
            "metadata": {
                "workflow_id": req.workflow_id,
                "invoice_id": req.invoice_id,
                "tenant_id": str(req.tenant_id),
                "subscription_id": str(req.subscription_id),
            },
        }
        try:
            pi = await self.client.v1.payment_intents.create_async(
                params=params, options={"idempotency_key": req.idempotency_key}
            )
        except stripe.CardError as exc:
            error = exc.error
            pi_id = error.payment_intent.id if error is not None and error.payment_intent is not None else None
            if pi_id is None:
                _raise_translated(exc, "charge the invoice")
            code = (error.decline_code or exc.code) if error is not None else exc.code
            log.info(
                "payment declined",
                extra={"tenant_id": str(req.tenant_id), "payment_intent": pi_id, "decline_code": code},
            )
            PAYMENTS_DECLINED.labels(code or "unknown").inc()
            return PaymentIntentInfo(payment_intent_id=pi_id, status="failed", decline_code=code)
        except stripe.InvalidRequestError as exc:
            if exc.param != "payment_method":
                _raise_translated(exc, "charge the invoice")
            return _refused(req, exc.code)
        except stripe.StripeError as exc:
            _raise_translated(exc, "charge the invoice")
        info = _payment_info(pi)
        if info.status == "succeeded":
            PAYMENTS_SUCCEEDED.inc()
        elif info.status == "failed":
            PAYMENTS_DECLINED.labels(info.decline_code or "unknown").inc()
        log.info("payment intent %s", info.status, extra={"tenant_id": str(req.tenant_id), "payment_intent": pi.id})
        return info

    async def _attach(self, req: CreatePaymentIntent) -> PaymentIntentInfo | None:
        """A card is charged again every period, off-session: Stripe only allows that for a PaymentMethod
        attached to the customer, so attach it on first use. Stripe's test ids (`pm_card_…`) make a fresh
        PaymentMethod at each use and need no attaching. None when the card can be charged."""
        if req.payment_method.startswith(TEST_PAYMENT_METHOD_PREFIX):
            return None
        try:
            pm = await self.client.v1.payment_methods.retrieve_async(req.payment_method)
            if pm.customer is None:
                await self.client.v1.payment_methods.attach_async(
                    req.payment_method, params={"customer": req.stripe_customer_id}
                )
            elif pm.customer != req.stripe_customer_id:
                return _refused(req, "payment_method_of_another_customer")
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 or exc.param == "payment_method" or exc.code == "resource_missing":
                return _refused(req, exc.code or "invalid_payment_method")
            _raise_translated(exc, "attach the payment method")
        except stripe.StripeError as exc:
            _raise_translated(exc, "attach the payment method")
        return None

    @activity.defn(name=names.RETRIEVE_PAYMENT_INTENT)
    async def retrieve_payment_intent(self, req: PaymentIntentRef) -> PaymentIntentInfo:
        """The polling fallback when no webhook arrives."""
        try:
            pi = await self.client.v1.payment_intents.retrieve_async(req.payment_intent_id)
        except stripe.StripeError as exc:
            _raise_translated(exc, "read the payment")
        return _payment_info(pi)

    @activity.defn(name=names.REFUND_PAYMENT)
    async def refund_payment(self, req: RefundPayment) -> Refunded:
        """Refund what succeeded among the listed intents (at most `amount` in total when set) and cancel those
        still waiting for an outcome, so none of them can take money later. One refund per intent and key: a
        retry replays Stripe's first answer, a refund made before is not made again."""
        budget = req.amount
        total, refund_ids = 0, []
        for pi_id in req.payment_intent_ids:
            if budget is not None and budget <= 0:
                break
            if pi_id.startswith(REFUSED_PAYMENT_PREFIX):
                continue  # Stripe refused the card before any PaymentIntent existed
            try:
                pi = await self.client.v1.payment_intents.retrieve_async(pi_id)
                if pi.status in CANCELABLE_STATES:  # no outcome yet: it must never succeed later
                    await self.client.v1.payment_intents.cancel_async(pi_id)
                    continue
                if pi.status != "succeeded":
                    continue
                amount = pi.amount_received if budget is None else min(budget, pi.amount_received)
                refund = await self.client.v1.refunds.create_async(
                    params={
                        "payment_intent": pi_id,
                        "amount": amount,
                        "reason": "requested_by_customer",
                        "metadata": {"tenant_id": str(req.tenant_id), "reason": req.reason[:450]},
                    },
                    options={"idempotency_key": f"{req.idempotency_key}:{pi_id}"},
                )
            except stripe.InvalidRequestError as exc:
                if exc.code == "charge_already_refunded":
                    continue  # refunded before under another key: nothing left to give back
                _raise_translated(exc, "refund the payment")
            except stripe.StripeError as exc:
                _raise_translated(exc, "refund the payment")
            total += refund.amount
            refund_ids.append(refund.id)
            if budget is not None:
                budget -= refund.amount
        log.info("refunded %s", total, extra={"tenant_id": str(req.tenant_id), "refunds": refund_ids})
        return Refunded(amount=total, refund_ids=refund_ids)

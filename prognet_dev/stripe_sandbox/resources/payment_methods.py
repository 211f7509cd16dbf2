"""/v1/payment_methods: Stripe's test PaymentMethods (`pm_card_visa`, `pm_card_chargeDeclined`, …), retrieve, attach,
detach, list.

As in Stripe test mode, a test id is a template: each use (retrieve, attach, or a PaymentIntent's
`payment_method`) makes a new `pm_…` object with that card's details, and the card's behaviour travels with its
fingerprint. Cards that decline also decline when attached to a customer, except `pm_card_chargeCustomerFail`
(attaching succeeds, charges fail) — Stripe's card for testing a saved card that later declines.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import StripeError, resource_missing

router = APIRouter(prefix="/v1/payment_methods", tags=["payment methods"])

KIND = "payment_method"
STATE_KIND = "payment_method_state"  # sandbox-only bookkeeping: a PaymentMethod used once without a customer


@dataclass(frozen=True)
class TestCard:
    number: str
    brand: str
    funding: str = "credit"
    country: str = "US"
    outcome: Literal["succeed", "decline", "authenticate", "authenticate_on_setup"] = "succeed"
    code: str | None = None  # error code of a decline: card_declined, expired_card, incorrect_cvc, processing_error
    decline_code: str | None = None
    message: str | None = None
    param: str | None = None
    attach_fails: bool = True  # a declining card declines when attached, too (Stripe validates it then)

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"prognet-sandbox:{self.number}".encode()).hexdigest()[:16]


def _decline(
    number: str,
    decline_code: str,
    message: str = "Your card was declined.",
    *,
    code: str = "card_declined",
    param: str | None = None,
    attach_fails: bool = True,
) -> TestCard:
    return TestCard(
        number,
        "visa",
        outcome="decline",
        code=code,
        decline_code=decline_code,
        message=message,
        param=param,
        attach_fails=attach_fails,
    )


_VISA = TestCard("4242424242424242", "visa")
_GENERIC = _decline("4000000000000002", "generic_decline")
_FUNDS = _decline("4000000000009995", "insufficient_funds", "Your card has insufficient funds.")
_AUTH = TestCard("4000002760003184", "visa", outcome="authenticate")

TEST_PAYMENT_METHODS: dict[str, TestCard] = {
    "pm_card_visa": _VISA,
    "pm_card_visa_debit": TestCard("4000056655665556", "visa", funding="debit"),
    "pm_card_mastercard": TestCard("5555555555554444", "mastercard"),
    "pm_card_mastercard_debit": TestCard("5200828282828210", "mastercard", funding="debit"),
    "pm_card_amex": TestCard("378282246310005", "amex"),
    "pm_card_discover": TestCard("6011111111111117", "discover"),
    "pm_card_chargeDeclined": _GENERIC,
    "pm_card_visa_chargeDeclined": _GENERIC,
    "pm_card_chargeDeclinedInsufficientFunds": _FUNDS,
    "pm_card_visa_chargeDeclinedInsufficientFunds": _FUNDS,
    "pm_card_chargeDeclinedLostCard": _decline("4000000000009987", "lost_card"),
    "pm_card_visa_chargeDeclinedLostCard": _decline("4000000000009987", "lost_card"),
    "pm_card_chargeDeclinedStolenCard": _decline("4000000000009979", "stolen_card"),
    "pm_card_visa_chargeDeclinedStolenCard": _decline("4000000000009979", "stolen_card"),
    "pm_card_chargeDeclinedExpiredCard": _decline(
        "4000000000000069", "expired_card", "Your card has expired.", code="expired_card", param="exp_month"
    ),
    "pm_card_chargeDeclinedIncorrectCvc": _decline(
        "4000000000000127",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
        code="incorrect_cvc",
        param="cvc",
    ),
    "pm_card_chargeDeclinedProcessingError": _decline(
        "4000000000000119",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
        code="processing_error",
    ),
    "pm_card_chargeCustomerFail": _decline("4000000000000341", "generic_decline", attach_fails=False),
    "pm_card_authenticationRequired": _AUTH,
    "pm_card_threeDSecureRequired": TestCard("4000000000003063", "visa", outcome="authenticate"),
    "pm_card_threeDSecure2Required": TestCard("4000000000003220", "visa", outcome="authenticate"),
    "pm_card_authenticationRequiredOnSetup": TestCard("4000002500003155", "visa", outcome="authenticate_on_setup"),
}
_BY_FINGERPRINT = {card.fingerprint: card for card in TEST_PAYMENT_METHODS.values()}


def card_of(pm: dict[str, Any]) -> TestCard:
    """The test card behind a stored PaymentMethod."""
    return _BY_FINGERPRINT.get((pm.get("card") or {}).get("fingerprint", ""), _VISA)


def _new_pm(call: Call, card: TestCard) -> dict[str, Any]:
    now = time.gmtime()
    pm = {
        "id": call.store.new_id("pm", 24),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "card": {
            "brand": card.brand,
            "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "unchecked"},
            "country": card.country,
            "display_brand": card.brand,
            "exp_month": now.tm_mon,
            "exp_year": now.tm_year + 1,
            "fingerprint": card.fingerprint,
            "funding": card.funding,
            "generated_from": None,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": int(time.time()),
        "customer": None,
        "livemode": False,
        "metadata": {},
        "type": "card",
    }
    return call.store.put(KIND, call.account, pm)


def resolve(call: Call, pm_id: str, *, param: str = "payment_method") -> dict[str, Any]:
    """A PaymentMethod by id, or a new one made from one of Stripe's test ids."""
    card = TEST_PAYMENT_METHODS.get(pm_id)
    if card is not None:
        return _new_pm(call, card)
    pm = call.store.get(KIND, call.account, pm_id)
    if pm is None:  # a missing object named in a parameter is a 400 in Stripe (a 404 only for the URL's object)
        hint = (
            "; the Stripe sandbox knows these test ids: " + ", ".join(sorted(TEST_PAYMENT_METHODS))
            if pm_id.startswith("pm_card_")
            else ""
        )
        raise StripeError(400, f"No such PaymentMethod: '{pm_id}'{hint}", code="resource_missing", param=param)
    return pm


def is_consumed(call: Call, pm_id: str) -> bool:
    state = call.store.get(STATE_KIND, call.account, pm_id)
    return bool(state and state.get("consumed"))


def mark_consumed(call: Call, pm_id: str) -> None:
    """Stripe: a PaymentMethod used without being attached to a customer cannot be used again."""
    call.store.put(STATE_KIND, call.account, {"id": pm_id, "consumed": True})


def check_usable(call: Call, pm: dict[str, Any], customer: str | None, *, param: str = "payment_method") -> None:
    if is_consumed(call, pm["id"]):
        raise StripeError(
            400,
            "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
            "attachment, shared with a connected account without Customer attachment, or was "
            "detached from a Customer. It may not be used again. To use a PaymentMethod multiple "
            "times, you must attach it to a Customer first.",
            code="payment_method_unexpected_state",
            param=param,
        )
    if pm.get("customer") and pm["customer"] != customer:
        if customer is None:
            message = (
                f"The provided PaymentMethod belongs to a Customer ({pm['customer']}), but you did not provide "
                "a Customer. Provide the customer parameter with the Customer the PaymentMethod is attached to."
            )
        else:
            message = f"The provided PaymentMethod belongs to Customer {pm['customer']}, not {customer}."
        raise StripeError(400, message, code="payment_method_unexpected_state", param=param)


def decline_error(card: TestCard, *, authentication: bool = False) -> StripeError:
    if authentication:
        return StripeError(
            402,
            "Your card was declined. This transaction requires authentication.",
            type="card_error",
            code="authentication_required",
            decline_code="authentication_required",
        )
    return StripeError(
        402, card.message, type="card_error", code=card.code, decline_code=card.decline_code, param=card.param
    )


def attach(call: Call, pm: dict[str, Any], customer_id: str) -> dict[str, Any]:
    pm = dict(pm, customer=customer_id)
    call.store.put(KIND, call.account, pm)
    call.emit("payment_method.attached", pm)
    return pm


def customer_of(call: Call, customer_id: str, param: str = "customer") -> dict[str, Any]:
    """A live customer named in a parameter (400 resource_missing otherwise, as Stripe answers)."""
    customer = call.store.get("customer", call.account, customer_id)
    if customer is None or customer.get("deleted"):
        raise StripeError(400, f"No such customer: '{customer_id}'", code="resource_missing", param=param)
    return customer


def _load(call: Call, pm_id: str) -> dict[str, Any]:
    pm = call.store.get(KIND, call.account, pm_id)
    if pm is None:
        raise resource_missing("PaymentMethod", pm_id)
    return pm


@router.get("")
async def list_payment_methods(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"customer", "type", "limit", "starting_after", "ending_before", "allow_redisplay"})
    customer = P.string(call.params, "customer")
    kind = P.string(call.params, "type")
    methods = [
        pm
        for pm in call.store.list(KIND, call.account)
        if (customer is None or pm.get("customer") == customer) and (kind is None or pm["type"] == kind)
    ]
    return P.paginate(methods, call.params, "/v1/payment_methods")


@router.get("/{pm_id}")
async def retrieve_payment_method(pm_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, set())
    if pm_id in TEST_PAYMENT_METHODS:
        return resolve(call, pm_id, param="id")
    return _load(call, pm_id)


@router.post("/{pm_id}/attach")
async def attach_payment_method(pm_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"customer"})
    customer_id = P.string(call.params, "customer", required=True)
    assert customer_id is not None
    customer_of(call, customer_id)
    pm = resolve(call, pm_id, param="payment_method") if pm_id in TEST_PAYMENT_METHODS else _load(call, pm_id)
    if pm.get("customer") == customer_id:
        return pm
    if pm.get("customer"):
        raise StripeError(
            400,
            "The payment method you provided has already been attached to a customer.",
            code="payment_method_unexpected_state",
            param="payment_method",
        )
    if is_consumed(call, pm["id"]):
        check_usable(call, pm, customer_id)
    card = card_of(pm)
    if card.outcome == "decline" and card.attach_fails:
        raise decline_error(card)
    return attach(call, pm, customer_id)


@router.post("/{pm_id}/detach")
async def detach_payment_method(pm_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, set())
    pm = _load(call, pm_id)
    if not pm.get("customer"):
        raise StripeError(
            400,
            "The payment method you provided is not attached to a customer so detachment is impossible.",
            code="payment_method_unexpected_state",
            param="payment_method",
        )
    pm = dict(pm, customer=None)
    call.store.put(KIND, call.account, pm)
    mark_consumed(call, pm_id)
    call.emit("payment_method.detached", pm)
    return pm

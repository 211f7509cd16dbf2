"""/v1/payment_intents: create (optionally confirming), confirm, retrieve, update, list, capture, cancel — with
Stripe's state machine and the behaviour of Stripe's test PaymentMethods.

    requires_payment_method → requires_confirmation → (confirm) → succeeded
                                                                → requires_capture (capture_method=manual) → succeeded
                                                                → requires_payment_method + last_payment_error (decline:
                                                                  HTTP 402 card_error carrying the PaymentIntent)
                                                                → requires_action (3D Secure; off_session or
                                                                  error_on_requires_action: a 402
                                                                  authentication_required)
    requires_action → (the customer authenticates: `POST /_sandbox/payment_intents/{id}/authenticate`) → succeeded
                                                                   or requires_payment_method (authentication failed)
    any status but succeeded → canceled

Every attempt makes a Charge (`latest_charge`), failed or succeeded. The sandbox answers synchronously, so
`processing` is never seen.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import StripeError, resource_missing
from . import charges
from . import payment_methods as PM

router = APIRouter(prefix="/v1/payment_intents", tags=["payment intents"])

KIND = "payment_intent"
# Stripe's minimum charge amounts for the common currencies (minor units); others: 1
MINIMUM_AMOUNT = {
    "usd": 50,
    "eur": 50,
    "gbp": 30,
    "chf": 50,
    "cad": 50,
    "aud": 50,
    "jpy": 50,
    "sek": 300,
    "nok": 300,
    "dkk": 250,
    "pln": 200,
}
MAXIMUM_AMOUNT = 99_999_999
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CONFIRM_PARAMS = {
    "payment_method",
    "off_session",
    "return_url",
    "receipt_email",
    "setup_future_usage",
    "payment_method_types",
    "payment_method_options",
    "mandate_data",
    "error_on_requires_action",
    "use_stripe_sdk",
    "shipping",
    "radar_options",
    "capture_method",
    "payment_method_data",
    "confirmation_token",
    "mandate",
}
CREATE_PARAMS = CONFIRM_PARAMS | {
    "amount",
    "currency",
    "customer",
    "confirm",
    "description",
    "metadata",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "automatic_payment_methods",
    "confirmation_method",
    "transfer_group",
    "on_behalf_of",
    "application_fee_amount",
    "transfer_data",
    "payment_method_configuration",
}
UPDATE_PARAMS = {
    "amount",
    "currency",
    "customer",
    "description",
    "metadata",
    "payment_method",
    "receipt_email",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "payment_method_types",
    "payment_method_options",
    "capture_method",
    "transfer_group",
    "application_fee_amount",
    "transfer_data",
}


def _amount(params: dict[str, Any], currency: str, *, required: bool) -> int | None:
    amount = P.integer(params, "amount", required=required)
    if amount is None:
        return None
    minimum = MINIMUM_AMOUNT.get(currency, 1)
    if amount < minimum:
        raise StripeError(
            400, f"Amount must be at least {minimum} {currency} (minor units)", code="amount_too_small", param="amount"
        )
    if amount > MAXIMUM_AMOUNT:
        raise StripeError(
            400,
            f"Amount must be no more than {MAXIMUM_AMOUNT} {currency} (minor units)",
            code="amount_too_large",
            param="amount",
        )
    return amount


def _off_session(params: dict[str, Any]) -> bool:
    raw = params.get("off_session")
    if raw in ("one_off", "recurring"):
        return True
    return P.boolean(params, "off_session")


def load(call: Call, pi_id: str, *, param: str | None = None) -> dict[str, Any]:
    pi = call.store.get(KIND, call.account, pi_id)
    if pi is None:
        if param:
            raise StripeError(400, f"No such payment_intent: '{pi_id}'", code="resource_missing", param=param)
        raise resource_missing("payment_intent", pi_id)
    return pi


def save(call: Call, pi: dict[str, Any]) -> dict[str, Any]:
    return call.store.put(KIND, call.account, pi)


def _authorizing_charge(call: Call, pi: dict[str, Any]) -> dict[str, Any]:
    """A copy of the charge that put a PaymentIntent into requires_capture (confirm always stores it)."""
    charge = charges.load(call, pi["latest_charge"])
    assert charge is not None, f"{pi['id']} awaits capture but its charge {pi['latest_charge']} is not in the store"
    return copy.deepcopy(charge)


def _set_payment_method(call: Call, pi: dict[str, Any], pm_id: str) -> None:
    pm = PM.resolve(call, pm_id)
    PM.check_usable(call, pm, pi["customer"])
    pi["payment_method"] = pm["id"]
    pi["last_payment_error"] = None


def _apply_common(call: Call, pi: dict[str, Any], params: dict[str, Any]) -> None:
    if "description" in params:
        pi["description"] = P.nullable_string(params, "description")
    if "metadata" in params:
        pi["metadata"] = P.metadata(params["metadata"], pi["metadata"])
    if "receipt_email" in params:
        pi["receipt_email"] = P.email(params, "receipt_email")
    if "setup_future_usage" in params:
        pi["setup_future_usage"] = P.choice(params, "setup_future_usage", ("on_session", "off_session"))
    for name in ("statement_descriptor", "statement_descriptor_suffix", "transfer_group"):
        if name in params:
            pi[name] = P.nullable_string(params, name, max_length=22 if "descriptor" in name else 5000)
    if "shipping" in params:
        pi["shipping"] = params["shipping"] or None
    if "payment_method_types" in params and isinstance(params["payment_method_types"], list):
        pi["payment_method_types"] = params["payment_method_types"]
        pi["automatic_payment_methods"] = None
    if "capture_method" in params:
        pi["capture_method"] = P.choice(
            params, "capture_method", ("automatic", "automatic_async", "manual"), "automatic_async"
        )


def new_payment_intent(call: Call) -> dict[str, Any]:
    p = call.params
    P.check_known(p, CREATE_PARAMS)
    currency = P.currency(p, required=True)
    assert currency is not None
    amount = _amount(p, currency, required=True)
    customer = P.string(p, "customer")
    if customer:
        PM.customer_of(call, customer)
    if "payment_method_data" in p:
        raise StripeError(
            400,
            "The Stripe sandbox never takes card details: pass a PaymentMethod id such as pm_card_visa.",
            code="parameter_unknown",
            param="payment_method_data",
        )
    pi_id = call.store.new_id("pi", 24)
    pi: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{pi_id}_secret_{call.store.new_id('x', 25)[2:]}",
        "confirmation_method": P.choice(p, "confirmation_method", ("automatic", "manual"), "automatic"),
        "created": int(time.time()),
        "currency": currency,
        "customer": customer or None,
        "description": None,
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
    _apply_common(call, pi, p)
    pm_id = P.string(p, "payment_method")
    if pm_id:
        _set_payment_method(call, pi, pm_id)
        pi["status"] = "requires_confirmation"
    return pi


# --- the payment attempt ------------------------------------------------------------------------------------


def _error_object(err: StripeError, charge: dict[str, Any] | None, pm: dict[str, Any]) -> dict[str, Any]:
    body = err.body()["error"]
    if charge is not None:
        body["charge"] = charge["id"]
    body["payment_method"] = copy.deepcopy(pm)
    return body


def _fail(call: Call, pi: dict[str, Any], pm: dict[str, Any], card: PM.TestCard, err: StripeError) -> StripeError:
    """A declined attempt: a failed charge, the PaymentIntent back to requires_payment_method, the events, and the
    402 to answer (carrying the PaymentIntent and the PaymentMethod, as Stripe's does)."""
    charge = charges.new_charge(
        call, pi, pm, card, failure={"code": err.code, "decline_code": err.decline_code, "message": err.message}
    )
    pi.update(
        status="requires_payment_method",
        payment_method=None,
        next_action=None,
        latest_charge=charge["id"],
        last_payment_error=_error_object(err, charge, pm),
        amount_capturable=0,
    )
    save(call, pi)
    call.emit("charge.failed", charge)
    call.emit("payment_intent.payment_failed", pi)
    err.extra.update(charge=charge["id"], payment_intent=copy.deepcopy(pi), payment_method=copy.deepcopy(pm))
    return err


def _succeed(call: Call, pi: dict[str, Any], pm: dict[str, Any], card: PM.TestCard) -> dict[str, Any]:
    manual = pi["capture_method"] == "manual"
    charge = charges.new_charge(call, pi, pm, card, captured=not manual)
    pi.update(next_action=None, latest_charge=charge["id"], last_payment_error=None)
    if manual:
        pi.update(status="requires_capture", amount_capturable=pi["amount"])
    else:
        pi.update(status="succeeded", amount_received=pi["amount"], amount_capturable=0)
    if pi["setup_future_usage"] and pi["customer"] and not pm.get("customer"):
        pm = PM.attach(call, pm, pi["customer"])
    elif not pm.get("customer"):
        PM.mark_consumed(call, pm["id"])
    save(call, pi)
    call.emit("charge.succeeded", charge)
    call.emit("payment_intent.amount_capturable_updated" if manual else "payment_intent.succeeded", pi)
    return pi


def attempt(call: Call, pi: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Confirm `pi` with its payment method; raises the 402 of a decline after recording it."""
    pm = PM.resolve(call, pi["payment_method"])
    card = PM.card_of(pm)
    off_session = _off_session(params)
    error_on_action = P.boolean(params, "error_on_requires_action")
    if card.outcome == "decline":
        raise _fail(call, pi, pm, card, PM.decline_error(card))
    needs_auth = card.outcome == "authenticate" or (
        card.outcome == "authenticate_on_setup" and not (off_session and pm.get("customer"))
    )
    if needs_auth:
        if off_session or error_on_action:
            raise _fail(call, pi, pm, card, PM.decline_error(card, authentication=True))
        return_url = P.string(params, "return_url")
        if return_url:
            next_action = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": return_url,
                    "url": f"https://hooks.stripe.com/3d_secure_2/hosted/sandbox/{pi['id']}",
                },
            }
        else:
            next_action = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "type": "three_d_secure_redirect",
                    "source": call.store.new_id("src", 24),
                    "stripe_js": f"https://hooks.stripe.com/redirect/authenticate/sandbox/{pi['id']}",
                },
            }
        pi.update(status="requires_action", next_action=next_action, last_payment_error=None)
        save(call, pi)
        call.emit("payment_intent.requires_action", pi)
        return pi
    return _succeed(call, pi, pm, card)


def confirm(call: Call, pi: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    status = pi["status"]
    if status not in CONFIRMABLE:
        tail = (
            "it has already succeeded after being previously confirmed"
            if status == "succeeded"
            else f"it has a status of {status}"
        )
        raise StripeError(
            400,
            f"You cannot confirm this PaymentIntent because {tail}.",
            code="payment_intent_unexpected_state",
            param=None,
            extra={"payment_intent": copy.deepcopy(pi)},
        )
    pm_id = P.string(params, "payment_method")
    if pm_id:
        _set_payment_method(call, pi, pm_id)
    if not pi["payment_method"]:
        raise StripeError(
            400,
            "You cannot confirm this PaymentIntent because it's missing a payment method. To "
            "confirm the PaymentIntent with cus_…, specify a payment method attached to this "
            "customer along with the customer ID.",
            code="payment_intent_unexpected_state",
            param="payment_method",
            extra={"payment_intent": copy.deepcopy(pi)},
        )
    _apply_common(call, pi, {k: v for k, v in params.items() if k != "payment_method"})
    return attempt(call, pi, params)


def complete_authentication(call: Call, pi: dict[str, Any], success: bool) -> dict[str, Any]:
    """The customer finished (or failed) 3D Secure for a PaymentIntent in requires_action."""
    if pi["status"] != "requires_action":
        raise StripeError(
            400,
            f"This PaymentIntent has a status of {pi['status']}, not requires_action.",
            code="payment_intent_unexpected_state",
        )
    pm = PM.resolve(call, pi["payment_method"])
    card = PM.card_of(pm)
    if success:
        return _succeed(call, pi, pm, card)
    err = StripeError(
        400,
        "The provided PaymentMethod has failed authentication. You can provide payment_method_data "
        "or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
        code="payment_intent_authentication_failure",
    )
    pi.update(
        status="requires_payment_method",
        payment_method=None,
        next_action=None,
        last_payment_error=_error_object(err, None, pm),
    )
    save(call, pi)
    call.emit("payment_intent.payment_failed", pi)
    return pi


# --- routes ---------------------------------------------------------------------------------------------------


@router.post("")
async def create_payment_intent(call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    confirm_now = P.boolean(p, "confirm")
    if not confirm_now:
        for name in ("off_session", "return_url", "error_on_requires_action", "mandate_data"):
            if name in p:
                raise StripeError(
                    400, f"You may only specify {name} when confirm=true.", param=name, code="parameter_invalid"
                )
    pi = save(call, new_payment_intent(call))
    call.emit("payment_intent.created", pi)
    if confirm_now:
        return confirm(call, pi, {k: v for k, v in p.items() if k in CONFIRM_PARAMS and k != "payment_method"})
    return pi


@router.get("")
async def list_payment_intents(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"customer", "created", "limit", "starting_after", "ending_before"})
    customer = P.string(call.params, "customer")
    intents = [pi for pi in call.store.list(KIND, call.account) if customer is None or pi["customer"] == customer]
    return P.paginate(intents, call.params, "/v1/payment_intents")


@router.get("/{pi_id}")
async def retrieve_payment_intent(pi_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"client_secret"})
    return load(call, pi_id)


@router.post("/{pi_id}")
async def update_payment_intent(pi_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    P.check_known(p, UPDATE_PARAMS)
    pi = copy.deepcopy(load(call, pi_id))
    if pi["status"] in ("succeeded", "canceled", "processing"):
        raise StripeError(
            400,
            f"This PaymentIntent's status is {pi['status']}; it can no longer be updated.",
            code="payment_intent_unexpected_state",
        )
    if "currency" in p:
        pi["currency"] = P.currency(p, required=True)
    if "amount" in p:
        pi["amount"] = _amount(p, pi["currency"], required=True)
    if "customer" in p:
        customer = P.string(p, "customer")
        if customer:
            PM.customer_of(call, customer)
        pi["customer"] = customer or None
    _apply_common(call, pi, p)
    if P.string(p, "payment_method"):
        _set_payment_method(call, pi, p["payment_method"])
        pi["status"] = "requires_confirmation"
    save(call, pi)
    return pi


@router.post("/{pi_id}/confirm")
async def confirm_payment_intent(pi_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, CONFIRM_PARAMS | {"client_secret"})
    pi = copy.deepcopy(load(call, pi_id))
    return confirm(call, pi, call.params)


@router.post("/{pi_id}/capture")
async def capture_payment_intent(pi_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    P.check_known(
        p,
        {
            "amount_to_capture",
            "metadata",
            "final_capture",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "application_fee_amount",
            "transfer_data",
        },
    )
    pi = copy.deepcopy(load(call, pi_id))
    if pi["status"] != "requires_capture":
        raise StripeError(
            400,
            f"This PaymentIntent could not be captured because it has a status of {pi['status']}. "
            "Only a PaymentIntent with one of the following statuses may be captured: "
            "requires_capture.",
            code="payment_intent_unexpected_state",
        )
    amount = P.integer(p, "amount_to_capture", minimum=1) or pi["amount_capturable"]
    if amount > pi["amount_capturable"]:
        raise StripeError(
            400,
            f"The amount_to_capture ({amount}) is greater than the amount capturable ({pi['amount_capturable']}).",
            code="amount_too_large",
            param="amount_to_capture",
        )
    charge = _authorizing_charge(call, pi)
    charge.update(
        captured=True,
        amount_captured=amount,
        amount_refunded=charge["amount"] - amount,
        refunded=False,
        balance_transaction=call.store.new_id("txn", 24),
    )
    call.store.put(charges.KIND, call.account, charge)
    if "metadata" in p:
        pi["metadata"] = P.metadata(p["metadata"], pi["metadata"])
    pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
    save(call, pi)
    call.emit("charge.captured", charge)
    call.emit("payment_intent.succeeded", pi)
    return pi


@router.post("/{pi_id}/cancel")
async def cancel_payment_intent(pi_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    P.check_known(p, {"cancellation_reason"})
    pi = copy.deepcopy(load(call, pi_id))
    if pi["status"] not in CANCELABLE:
        raise StripeError(
            400,
            f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. "
            "Only a PaymentIntent with one of the following statuses may be canceled: " + ", ".join(CANCELABLE) + ".",
            code="payment_intent_unexpected_state",
        )
    reason = P.choice(p, "cancellation_reason", ("duplicate", "fraudulent", "requested_by_customer", "abandoned"))
    if pi["status"] == "requires_capture" and pi["latest_charge"]:
        charge = _authorizing_charge(call, pi)
        charge.update(amount_refunded=charge["amount"], refunded=True)  # Stripe releases the authorization
        call.store.put(charges.KIND, call.account, charge)
    pi.update(
        status="canceled",
        canceled_at=int(time.time()),
        cancellation_reason=reason,
        next_action=None,
        amount_capturable=0,
    )
    save(call, pi)
    call.emit("payment_intent.canceled", pi)
    return pi

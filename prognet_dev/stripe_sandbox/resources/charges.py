"""/v1/charges: the Charge objects PaymentIntents create (one per payment attempt), retrieve and list."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import resource_missing
from .payment_methods import TestCard

router = APIRouter(prefix="/v1/charges", tags=["charges"])

KIND = "charge"


def new_charge(
    call: Call,
    pi: dict[str, Any],
    pm: dict[str, Any],
    card: TestCard,
    *,
    failure: dict[str, Any] | None = None,
    captured: bool = True,
) -> dict[str, Any]:
    """A charge for one attempt of `pi` with `pm`: succeeded (captured or not) or failed with `failure`
    ({code, decline_code, message})."""
    succeeded = failure is None
    if succeeded:
        outcome = {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    else:
        assert failure is not None
        reason = failure.get("decline_code")
        outcome = {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "declined_by_network",
            "reason": reason,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": (
                "The bank did not return any further details with this decline."
                if reason in (None, "generic_decline")
                else f"The bank returned the decline code `{reason}`."
            ),
            "type": "issuer_declined",
        }
    charge_id = call.store.new_id("ch", 24)
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": pi["amount"],
        "amount_captured": pi["amount"] if succeeded and captured else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": call.store.new_id("txn", 24) if succeeded and captured else None,
        "billing_details": pm["billing_details"],
        "calculated_statement_descriptor": "PROGNETWORK",
        "captured": succeeded and captured,
        "created": int(time.time()),
        "currency": pi["currency"],
        "customer": pi["customer"],
        "description": pi["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if failure is None else failure["code"],
        "failure_message": None if failure is None else failure["message"],
        "fraud_details": {},
        "livemode": False,
        "metadata": dict(pi["metadata"]),
        "on_behalf_of": None,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": pi["id"],
        "payment_method": pm["id"],
        "payment_method_details": {
            "card": {
                "amount_authorized": pi["amount"] if succeeded else None,
                "brand": pm["card"]["brand"],
                "checks": pm["card"]["checks"],
                "country": pm["card"]["country"],
                "exp_month": pm["card"]["exp_month"],
                "exp_year": pm["card"]["exp_year"],
                "fingerprint": pm["card"]["fingerprint"],
                "funding": pm["card"]["funding"],
                "last4": pm["card"]["last4"],
                "network": card.brand,
                "network_token": {"used": False},
                "three_d_secure": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": pi.get("receipt_email"),
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/sandbox/{charge_id}" if succeeded else None,
        "refunded": False,
        "review": None,
        "shipping": pi.get("shipping"),
        "source_transfer": None,
        "statement_descriptor": pi.get("statement_descriptor"),
        "statement_descriptor_suffix": pi.get("statement_descriptor_suffix"),
        "status": "succeeded" if succeeded else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }
    return call.store.put(KIND, call.account, charge)


def load(call: Call, charge_id: str) -> dict[str, Any] | None:
    return call.store.get(KIND, call.account, charge_id)


@router.get("")
async def list_charges(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(
        call.params,
        {"customer", "payment_intent", "limit", "starting_after", "ending_before", "created", "transfer_group"},
    )
    customer, pi = P.string(call.params, "customer"), P.string(call.params, "payment_intent")
    charges = [
        c
        for c in call.store.list(KIND, call.account)
        if (customer is None or c["customer"] == customer) and (pi is None or c["payment_intent"] == pi)
    ]
    return P.paginate(charges, call.params, "/v1/charges")


@router.get("/{charge_id}")
async def retrieve_charge(charge_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, set())
    charge = load(call, charge_id)
    if charge is None:
        raise resource_missing("charge", charge_id)
    return charge

"""/v1/refunds: full or partial refunds of a PaymentIntent's (or a charge's) captured amount, retrieve, list.

The charge keeps the running total (`amount_refunded`, `refunded` once all of it is back); each refund records
`refund.created` and `charge.refunded` (with the charge as it is after the refund)."""

from __future__ import annotations

import copy
import time
from typing import Any

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import StripeError, resource_missing
from . import charges, payment_intents

router = APIRouter(prefix="/v1/refunds", tags=["refunds"])

KIND = "refund"
REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency}" if currency not in ("jpy", "krw") else f"{amount} {currency}"


def _charge_to_refund(call: Call) -> dict[str, Any]:
    p = call.params
    charge_id, pi_id = P.string(p, "charge"), P.string(p, "payment_intent")
    if not charge_id and not pi_id:
        raise StripeError(
            400,
            "One of the following params should be provided for this request: payment_intent or charge.",
            code="parameter_missing",
            param="payment_intent",
        )
    if pi_id:
        pi = payment_intents.load(call, pi_id, param="payment_intent")
        if charge_id and pi.get("latest_charge") != charge_id:
            raise StripeError(
                400,
                f"The charge {charge_id} does not belong to PaymentIntent {pi_id}.",
                code="parameter_invalid",
                param="charge",
            )
        if pi["status"] != "succeeded" or not pi.get("latest_charge"):
            raise StripeError(
                400,
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                code="charge_not_refundable"
                if pi["status"] == "requires_capture"
                else "payment_intent_unexpected_state",
                param="payment_intent",
            )
        charge_id = pi["latest_charge"]
    assert charge_id is not None
    charge = charges.load(call, charge_id)
    if charge is None:
        raise StripeError(400, f"No such charge: '{charge_id}'", code="resource_missing", param="charge")
    if charge["status"] != "succeeded" or not charge["captured"]:
        raise StripeError(
            400,
            f"Charge {charge_id} has not been captured (or failed) and cannot be refunded.",
            code="charge_not_refundable",
            param="charge",
        )
    return charge


@router.post("")
async def create_refund(call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    P.check_known(
        p,
        {
            "charge",
            "payment_intent",
            "amount",
            "reason",
            "metadata",
            "instructions_email",
            "origin",
            "refund_application_fee",
            "reverse_transfer",
            "currency",
            "customer",
        },
    )
    charge = copy.deepcopy(_charge_to_refund(call))
    remaining = charge["amount_captured"] - charge["amount_refunded"]
    if remaining <= 0:
        raise StripeError(
            400, f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded", param="charge"
        )
    amount = P.integer(p, "amount", minimum=1)
    if amount is None:
        amount = remaining
    if amount > remaining:
        raise StripeError(
            400,
            f"Refund amount ({_money(amount, charge['currency'])}) is greater than unrefunded amount "
            f"on charge ({_money(remaining, charge['currency'])})",
            code="amount_too_large",
            param="amount",
        )
    refund = {
        "id": call.store.new_id("re", 24),
        "object": "refund",
        "amount": amount,
        "balance_transaction": call.store.new_id("txn", 24),
        "charge": charge["id"],
        "created": int(time.time()),
        "currency": charge["currency"],
        "destination_details": {
            "card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"},
            "type": "card",
        },
        "metadata": P.metadata(p.get("metadata")),
        "payment_intent": charge["payment_intent"],
        "reason": P.choice(p, "reason", REASONS),
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    call.store.put(KIND, call.account, refund)
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    call.store.put(charges.KIND, call.account, charge)
    call.emit("refund.created", refund)
    call.emit("charge.refunded", charge)
    return refund


@router.get("")
async def list_refunds(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"charge", "payment_intent", "created", "limit", "starting_after", "ending_before"})
    charge, pi = P.string(call.params, "charge"), P.string(call.params, "payment_intent")
    refunds = [
        r
        for r in call.store.list(KIND, call.account)
        if (charge is None or r["charge"] == charge) and (pi is None or r["payment_intent"] == pi)
    ]
    return P.paginate(refunds, call.params, "/v1/refunds")


@router.get("/{refund_id}")
async def retrieve_refund(refund_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, set())
    refund = call.store.get(KIND, call.account, refund_id)
    if refund is None:
        raise resource_missing("refund", refund_id)
    return refund

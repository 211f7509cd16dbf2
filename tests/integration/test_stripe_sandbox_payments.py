"""The Stripe sandbox's payments through the real `stripe` SDK: Stripe's test PaymentMethods (succeed, decline with
the right decline code, insufficient funds, 3D Secure), the PaymentIntent state machine, the 402 card_error that
carries the PaymentIntent, Idempotency-Key replay of creates and declines, refunds (full, partial, over-refund) and
the recorded events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import stripe

from prognet_dev import SandboxAdmin, StripeSandbox

KEY = "sk_test_sandbox_payments"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[StripeSandbox]:
    async with StripeSandbox(state_file=tmp_path / "stripe.json", port=0) as sb:
        yield sb


@pytest.fixture
def sdk(sandbox: StripeSandbox) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": sandbox.api_base}, max_network_retries=0)


async def customer(sdk: stripe.StripeClient) -> str:
    return (await sdk.v1.customers.create_async(params={"email": "billing@acme.test"})).id


async def test_successful_payment_intent(sdk: stripe.StripeClient) -> None:
    cus = await customer(sdk)
    pi = await sdk.v1.payment_intents.create_async(
        params={
            "amount": 2500,
            "currency": "EUR",
            "customer": cus,
            "payment_method": "pm_card_visa",
            "confirm": True,
            "off_session": True,
            "description": "invoice 7",
            "metadata": {"invoice_id": "inv-7"},
        }
    )
    assert pi.id.startswith("pi_") and pi.object == "payment_intent"
    assert (pi.status, pi.amount, pi.amount_received, pi.currency, pi.customer) == ("succeeded", 2500, 2500, "eur", cus)
    assert pi.last_payment_error is None and pi.next_action is None and pi.livemode is False
    assert pi.metadata.to_dict() == {"invoice_id": "inv-7"} and pi.description == "invoice 7"
    assert pi.client_secret.startswith(f"{pi.id}_secret_")
    # a test id is a template: the intent carries a new PaymentMethod with that card
    assert pi.payment_method.startswith("pm_") and pi.payment_method != "pm_card_visa"
    pm = await sdk.v1.payment_methods.retrieve_async(pi.payment_method)
    assert (pm.type, pm.card.brand, pm.card.last4) == ("card", "visa", "4242")

    charge = await sdk.v1.charges.retrieve_async(pi.latest_charge)
    assert charge.id.startswith("ch_") and (charge.status, charge.paid, charge.captured) == ("succeeded", True, True)
    assert (charge.amount_captured, charge.amount_refunded, charge.refunded) == (2500, 0, False)
    assert charge.payment_intent == pi.id and charge.outcome.type == "authorized"

    assert (await sdk.v1.payment_intents.retrieve_async(pi.id)).to_dict() == pi.to_dict()


async def test_two_step_create_then_confirm_and_list_by_customer(sdk: stripe.StripeClient) -> None:
    cus, other = await customer(sdk), await customer(sdk)
    empty = await sdk.v1.payment_intents.create_async(params={"amount": 1000, "currency": "usd", "customer": cus})
    assert empty.status == "requires_payment_method" and empty.payment_method is None
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.confirm_async(empty.id)
    assert info.value.code == "payment_intent_unexpected_state" and info.value.param == "payment_method"

    pm = await sdk.v1.payment_methods.attach_async("pm_card_mastercard", params={"customer": cus})
    assert pm.customer == cus and pm.card.brand == "mastercard" and pm.card.last4 == "4444"
    pi = await sdk.v1.payment_intents.create_async(
        params={"amount": 1200, "currency": "usd", "customer": cus, "payment_method": pm.id}
    )
    assert pi.status == "requires_confirmation" and pi.payment_method == pm.id
    confirmed = await sdk.v1.payment_intents.confirm_async(pi.id)
    assert confirmed.status == "succeeded" and confirmed.latest_charge.startswith("ch_")
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.confirm_async(pi.id)
    assert info.value.code == "payment_intent_unexpected_state" and "already succeeded" in str(info.value)
    # an attached PaymentMethod is reusable; another customer's is not
    again = await sdk.v1.payment_intents.create_async(
        params={"amount": 1300, "currency": "usd", "customer": cus, "payment_method": pm.id, "confirm": True}
    )
    assert again.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.create_async(
            params={"amount": 1300, "currency": "usd", "customer": other, "payment_method": pm.id, "confirm": True}
        )
    assert info.value.code == "payment_method_unexpected_state"

    await sdk.v1.payment_intents.create_async(params={"amount": 900, "currency": "usd", "customer": other})
    listed = await sdk.v1.payment_intents.list_async(params={"customer": cus, "limit": 100})
    assert [p.id for p in listed.data] == [again.id, pi.id, empty.id]


@pytest.mark.parametrize(
    ("payment_method", "code", "decline_code", "message"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card", "Your card has expired."),
    ],
)
async def test_declines_raise_card_error_with_the_payment_intent(
    sdk: stripe.StripeClient, payment_method: str, code: str, decline_code: str, message: str
) -> None:
    cus = await customer(sdk)
    with pytest.raises(stripe.CardError) as info:
        await sdk.v1.payment_intents.create_async(
            params={
                "amount": 4200,
                "currency": "usd",
                "customer": cus,
                "payment_method": payment_method,
                "confirm": True,
                "off_session": True,
            }
        )
    err = info.value
    assert err.http_status == 402 and err.code == code and err.user_message == message
    assert err.error.type == "card_error" and err.error.decline_code == decline_code
    failed_pi = err.error.payment_intent
    assert failed_pi.status == "requires_payment_method" and failed_pi.payment_method is None
    assert failed_pi.last_payment_error.decline_code == decline_code
    assert failed_pi.last_payment_error.code == code
    assert failed_pi.last_payment_error.charge == err.error.charge == failed_pi.latest_charge

    stored = await sdk.v1.payment_intents.retrieve_async(failed_pi.id)
    assert stored.status == "requires_payment_method" and stored.last_payment_error.decline_code == decline_code
    charge = await sdk.v1.charges.retrieve_async(stored.latest_charge)
    assert (charge.status, charge.paid, charge.failure_code) == ("failed", False, code)
    assert charge.outcome.type == "issuer_declined"

    # recovery after a payment-method change: the same intent, confirmed with a good card
    recovered = await sdk.v1.payment_intents.confirm_async(stored.id, params={"payment_method": "pm_card_visa"})
    assert recovered.status == "succeeded" and recovered.last_payment_error is None
    assert recovered.latest_charge != stored.latest_charge


async def test_declining_cards_decline_when_attached_but_charge_customer_fail_attaches(
    sdk: stripe.StripeClient,
) -> None:
    cus = await customer(sdk)
    with pytest.raises(stripe.CardError) as info:
        await sdk.v1.payment_methods.attach_async("pm_card_chargeDeclinedInsufficientFunds", params={"customer": cus})
    assert info.value.error.decline_code == "insufficient_funds"
    saved = await sdk.v1.payment_methods.attach_async("pm_card_chargeCustomerFail", params={"customer": cus})
    assert saved.customer == cus
    with pytest.raises(stripe.CardError) as info:
        await sdk.v1.payment_intents.create_async(
            params={
                "amount": 990,
                "currency": "usd",
                "customer": cus,
                "payment_method": saved.id,
                "confirm": True,
                "off_session": True,
            }
        )
    assert info.value.error.decline_code == "generic_decline"
    listed = await sdk.v1.payment_methods.list_async(params={"customer": cus})
    assert [pm.id for pm in listed.data] == [saved.id]


async def test_authentication_required(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    cus = await customer(sdk)
    pi = await sdk.v1.payment_intents.create_async(
        params={
            "amount": 5000,
            "currency": "usd",
            "customer": cus,
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    assert pi.status == "requires_action" and pi.next_action.type == "use_stripe_sdk"
    assert pi.latest_charge is None
    # the customer completes 3D Secure (what a browser would do)
    done = sandbox.authenticate_payment_intent(pi.id)
    assert done["status"] == "succeeded"
    assert (await sdk.v1.payment_intents.retrieve_async(pi.id)).status == "succeeded"

    failing = await sdk.v1.payment_intents.create_async(
        params={
            "amount": 5000,
            "currency": "usd",
            "customer": cus,
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
            "return_url": "https://app.test/return",
        }
    )
    assert failing.next_action.type == "redirect_to_url"
    assert failing.next_action.redirect_to_url.return_url == "https://app.test/return"
    async with SandboxAdmin(sandbox.api_base) as admin:  # the same over the admin API
        failed = await admin.authenticate_payment_intent(failing.id, success=False)
    assert failed["status"] == "requires_payment_method"
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"

    # off-session, nobody can authenticate: Stripe declines with authentication_required
    with pytest.raises(stripe.CardError) as info:
        await sdk.v1.payment_intents.create_async(
            params={
                "amount": 5000,
                "currency": "usd",
                "customer": cus,
                "payment_method": "pm_card_authenticationRequired",
                "confirm": True,
                "off_session": True,
            }
        )
    assert info.value.code == "authentication_required"
    assert info.value.error.decline_code == "authentication_required"
    assert info.value.error.payment_intent.status == "requires_payment_method"


async def test_idempotent_create_and_replayed_decline(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    cus = await customer(sdk)
    params = {
        "amount": 3000,
        "currency": "usd",
        "customer": cus,
        "payment_method": "pm_card_visa",
        "confirm": True,
        "off_session": True,
        "metadata": {"invoice_id": "inv-1"},
    }
    first = await sdk.v1.payment_intents.create_async(params=params, options={"idempotency_key": "billing-inv-1"})
    second = await sdk.v1.payment_intents.create_async(params=params, options={"idempotency_key": "billing-inv-1"})
    assert second.id == first.id and second.to_dict() == first.to_dict()
    assert len(sandbox.payment_intents(customer=cus)) == 1
    assert len(sandbox.events("charge.succeeded")) == 1  # the replay charged nothing
    replays = [r for r in sandbox.requests(path_prefix="/v1/payment_intents", method="POST") if r["replayed"]]
    assert len(replays) == 1
    with pytest.raises(stripe.IdempotencyError):
        await sdk.v1.payment_intents.create_async(
            params={**params, "amount": 3001}, options={"idempotency_key": "billing-inv-1"}
        )

    declined = {**params, "payment_method": "pm_card_chargeDeclined", "metadata": {"invoice_id": "inv-2"}}
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            await sdk.v1.payment_intents.create_async(params=declined, options={"idempotency_key": "billing-inv-2"})
        errors.append(info.value)
    assert errors[0].error.payment_intent.id == errors[1].error.payment_intent.id
    assert errors[1].headers.get("idempotent-replayed") == "true"
    assert len(sandbox.events("payment_intent.payment_failed")) == 1


async def test_parameter_errors(sdk: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.create_async(params={"amount": 20, "currency": "usd"})
    assert info.value.code == "amount_too_small" and info.value.param == "amount"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.create_async(
            params={"amount": 2000, "currency": "usd", "payment_method": "pm_card_nonsense"}
        )
    assert info.value.code == "resource_missing" and info.value.param == "payment_method"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.create_async(params={"amount": 2000, "currency": "usd", "customer": "cus_nope"})
    assert info.value.code == "resource_missing" and info.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.retrieve_async("pi_missing")
    assert info.value.http_status == 404 and info.value.code == "resource_missing"


async def test_single_use_payment_method_without_customer(sdk: stripe.StripeClient) -> None:
    pi = await sdk.v1.payment_intents.create_async(
        params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    assert pi.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.create_async(
            params={"amount": 1000, "currency": "usd", "payment_method": pi.payment_method, "confirm": True}
        )
    assert info.value.code == "payment_method_unexpected_state"


async def test_manual_capture_and_cancel(sdk: stripe.StripeClient) -> None:
    pi = await sdk.v1.payment_intents.create_async(
        params={
            "amount": 8000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "capture_method": "manual",
        }
    )
    assert (pi.status, pi.amount_capturable, pi.amount_received) == ("requires_capture", 8000, 0)
    captured = await sdk.v1.payment_intents.capture_async(pi.id, params={"amount_to_capture": 6000})
    assert (captured.status, captured.amount_received) == ("succeeded", 6000)
    charge = await sdk.v1.charges.retrieve_async(captured.latest_charge)
    assert (charge.captured, charge.amount_captured) == (True, 6000)

    open_pi = await sdk.v1.payment_intents.create_async(params={"amount": 8000, "currency": "usd"})
    canceled = await sdk.v1.payment_intents.cancel_async(open_pi.id, params={"cancellation_reason": "abandoned"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.payment_intents.cancel_async(captured.id)
    assert info.value.code == "payment_intent_unexpected_state"


async def test_refunds_full_partial_and_over_refund(sdk: stripe.StripeClient) -> None:
    cus = await customer(sdk)
    pi = await sdk.v1.payment_intents.create_async(
        params={"amount": 10000, "currency": "usd", "customer": cus, "payment_method": "pm_card_visa", "confirm": True}
    )

    partial = await sdk.v1.refunds.create_async(
        params={"payment_intent": pi.id, "amount": 2500, "reason": "requested_by_customer"}
    )
    assert partial.id.startswith("re_") and partial.object == "refund"
    assert (partial.amount, partial.status, partial.charge, partial.payment_intent) == (
        2500,
        "succeeded",
        pi.latest_charge,
        pi.id,
    )
    charge = await sdk.v1.charges.retrieve_async(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (2500, False)
    assert (await sdk.v1.refunds.retrieve_async(partial.id)).to_dict() == partial.to_dict()

    with pytest.raises(stripe.InvalidRequestError) as info:  # more than what is left
        await sdk.v1.refunds.create_async(params={"payment_intent": pi.id, "amount": 7501})
    assert info.value.code == "amount_too_large" and info.value.param == "amount"
    assert "greater than unrefunded amount" in str(info.value)

    rest = await sdk.v1.refunds.create_async(params={"charge": pi.latest_charge})  # no amount: all that is left
    assert rest.amount == 7500
    charge = await sdk.v1.charges.retrieve_async(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (10000, True)
    assert (await sdk.v1.payment_intents.retrieve_async(pi.id)).status == "succeeded"  # as in Stripe
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.refunds.create_async(params={"payment_intent": pi.id})
    assert info.value.code == "charge_already_refunded"
    listed = await sdk.v1.refunds.list_async(params={"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [rest.id, partial.id]

    unpaid = await sdk.v1.payment_intents.create_async(params={"amount": 1000, "currency": "usd"})
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.refunds.create_async(params={"payment_intent": unpaid.id})
    assert info.value.param == "payment_intent"


async def test_events_record_every_state_change(sandbox: StripeSandbox, sdk: stripe.StripeClient) -> None:
    cus = await customer(sdk)
    ok = await sdk.v1.payment_intents.create_async(
        params={"amount": 1500, "currency": "usd", "customer": cus, "payment_method": "pm_card_visa", "confirm": True},
        options={"idempotency_key": "evt-test-1"},
    )
    with pytest.raises(stripe.CardError):
        await sdk.v1.payment_intents.create_async(
            params={
                "amount": 1500,
                "currency": "usd",
                "customer": cus,
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
            }
        )
    await sdk.v1.refunds.create_async(params={"payment_intent": ok.id, "amount": 500})

    events = (await sdk.v1.events.list_async(params={"limit": 100})).data
    types = [e.type for e in events]
    assert types == [
        "charge.refunded",
        "refund.created",
        "payment_intent.payment_failed",
        "charge.failed",
        "payment_intent.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "payment_intent.created",
        "customer.created",
    ]
    succeeded = next(e for e in events if e.type == "payment_intent.succeeded")
    assert succeeded.id.startswith("evt_") and succeeded.object == "event" and succeeded.livemode is False
    assert succeeded.api_version and isinstance(succeeded.created, int)
    assert succeeded.data.object.id == ok.id and succeeded.data.object.status == "succeeded"
    assert succeeded.request.idempotency_key == "evt-test-1"
    created = [e for e in events if e.type == "payment_intent.created"][-1]
    assert created.data.object.status == "requires_confirmation"  # a snapshot at the time, not the live object
    refunded = events[0]
    assert refunded.data.object.object == "charge" and refunded.data.object.amount_refunded == 500

    only_pi = await sdk.v1.events.list_async(params={"type": "payment_intent.*", "limit": 100})
    assert {e.type for e in only_pi.data} == {
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
    }
    failed = await sdk.v1.events.list_async(params={"types": ["payment_intent.payment_failed", "charge.failed"]})
    assert [e.type for e in failed.data] == ["payment_intent.payment_failed", "charge.failed"]
    fetched = await sdk.v1.events.retrieve_async(succeeded.id)
    assert fetched.to_dict() == succeeded.to_dict()
    with pytest.raises(stripe.InvalidRequestError) as info:
        await sdk.v1.events.retrieve_async("evt_missing")
    assert info.value.http_status == 404
    # another API key (account) sees none of them
    other = stripe.StripeClient("sk_test_someone_else", base_addresses={"api": sandbox.api_base}, max_network_retries=0)
    assert (await other.v1.events.list_async()).data == []


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "stripe.json"
    async with StripeSandbox(state_file=state, port=0) as first:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": first.api_base}, max_network_retries=0)
        pi = await sdk.v1.payment_intents.create_async(
            params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
    async with StripeSandbox(state_file=state, port=0) as second:
        sdk = stripe.StripeClient(KEY, base_addresses={"api": second.api_base}, max_network_retries=0)
        again = await sdk.v1.payment_intents.retrieve_async(pi.id)
        assert again.status == "succeeded"
        refund = await sdk.v1.refunds.create_async(params={"payment_intent": pi.id})
        assert refund.amount == 1000
        async with httpx.AsyncClient(base_url=second.api_base) as http:
            listed = (await http.get("/_sandbox/objects/payment_intent")).json()["data"]
        assert [p["id"] for p in listed] == [pi.id]

"""The PaymentIntent and refund activities against the Stripe sandbox (in-process), through ActivityEnvironment.

Stripe's test PaymentMethod ids behave as in test mode; a decline is an answer, not an activity failure."""

from __future__ import annotations

import uuid

import pytest
import stripe
from temporalio.exceptions import ApplicationError

from models.billing_contracts import CreateStripeCustomer
from models.billing_cycle_contracts import CreatePaymentIntent, PaymentIntentRef, RefundPayment
from models.errors import STRIPE_PERMANENT_ERROR


@pytest.fixture
async def customer(billing, env) -> str:
    tid = uuid.uuid4()
    made = await env.run(
        billing.create_stripe_customer,
        CreateStripeCustomer(tenant_id=tid, name="Acme", idempotency_key=f"tenant-{tid}:customer"),
    )
    return made.customer_id


def _charge(customer: str, payment_method: str, *, amount: int = 2900, key: str | None = None) -> CreatePaymentIntent:
    wid = f"billing-{uuid.uuid4()}-0"
    return CreatePaymentIntent(
        idempotency_key=key or f"{wid}:pi:1",
        invoice_id=str(uuid.uuid4()),
        tenant_id=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        workflow_id=wid,
        amount=amount,
        currency="eur",
        stripe_customer_id=customer,
        payment_method=payment_method,
    )


async def test_visa_succeeds_and_carries_the_routing_metadata(sandbox, billing, env, customer):
    req = _charge(customer, "pm_card_visa")
    info = await env.run(billing.create_payment_intent, req)
    assert info.status == "succeeded" and info.decline_code is None
    [pi] = [p for p in sandbox.payment_intents(customer=customer)]
    assert pi["id"] == info.payment_intent_id and pi["amount_received"] == 2900 and pi["currency"] == "eur"
    assert pi["metadata"]["workflow_id"] == req.workflow_id and pi["metadata"]["invoice_id"] == req.invoice_id
    polled = await env.run(billing.retrieve_payment_intent, PaymentIntentRef(payment_intent_id=info.payment_intent_id))
    # the same answer; only the create call is stamped with the time it answered (dunning counts from it)
    assert polled == info.model_copy(update={"answered_at": None}) and info.answered_at is not None


@pytest.mark.parametrize(
    "payment_method, code",
    [("pm_card_chargeDeclined", "generic_decline"), ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
async def test_a_decline_is_an_answer_with_stripes_decline_code(sandbox, billing, env, customer, payment_method, code):
    info = await env.run(billing.create_payment_intent, _charge(customer, payment_method))
    assert (info.status, info.decline_code) == ("failed", code)
    polled = await env.run(billing.retrieve_payment_intent, PaymentIntentRef(payment_intent_id=info.payment_intent_id))
    assert (polled.status, polled.decline_code) == ("failed", code)
    assert sandbox.payment_intents(status="succeeded", customer=customer) == []


async def test_a_retried_charge_with_the_same_key_charges_once(sandbox, billing, env, customer):
    req = _charge(customer, "pm_card_visa")
    first = await env.run(billing.create_payment_intent, req)
    # the response was lost after Stripe charged: the retry replays Stripe's first answer
    sandbox.inject_fault(500, path_prefix="/v1/payment_intents", method="POST", phase="after")
    with pytest.raises(stripe.StripeError):  # a 500 is temporary: re-raised for the retry policy
        await env.run(billing.create_payment_intent, _charge(customer, "pm_card_visa", key="other:pi:1"))
    again = await env.run(billing.create_payment_intent, req)
    # Stripe's first answer replayed, stamped with the time of this call
    assert again.model_copy(update={"answered_at": None}) == first.model_copy(update={"answered_at": None})
    assert first.answered_at is not None and again.answered_at is not None and again.answered_at >= first.answered_at
    succeeded = sandbox.payment_intents(status="succeeded", customer=customer)
    assert len(succeeded) == 2, "one for `req`, one for the other key whose answer was lost"


async def test_an_unknown_payment_method_is_a_refused_attempt_not_a_crash(sandbox, billing, env, customer):
    info = await env.run(billing.create_payment_intent, _charge(customer, "pm_does_not_exist"))
    assert info.status == "failed" and info.decline_code == "resource_missing"
    assert info.payment_intent_id.startswith("refused:")
    assert sandbox.payment_intents(customer=customer) == []


async def _real_card(billing) -> str:
    """A concrete PaymentMethod (`pm_…`, not a test id), as a client-side Stripe form would create."""
    return (await billing.client.v1.payment_methods.retrieve_async("pm_card_visa")).id


async def test_a_real_card_is_attached_on_first_use_and_charged_every_period(sandbox, billing, env, customer):
    card = await _real_card(billing)
    first = await env.run(billing.create_payment_intent, _charge(customer, card))
    second = await env.run(billing.create_payment_intent, _charge(customer, card))
    assert (first.status, second.status) == ("succeeded", "succeeded")
    pm = await billing.client.v1.payment_methods.retrieve_async(card)
    assert pm.customer == customer


async def test_another_customers_card_is_refused(billing, env, customer):
    card = await _real_card(billing)
    await env.run(billing.create_payment_intent, _charge(customer, card))  # now attached to `customer`
    tid = uuid.uuid4()
    other = (
        await env.run(
            billing.create_stripe_customer,
            CreateStripeCustomer(tenant_id=tid, name="Other", idempotency_key=f"tenant-{tid}:customer"),
        )
    ).customer_id
    info = await env.run(billing.create_payment_intent, _charge(other, card))
    assert info.status == "failed" and info.decline_code == "payment_method_of_another_customer"


async def test_a_missing_customer_is_permanent(billing, env):
    with pytest.raises(ApplicationError) as caught:
        await env.run(billing.create_payment_intent, _charge("cus_missing", "pm_card_visa"))
    assert caught.value.type == STRIPE_PERMANENT_ERROR and caught.value.non_retryable


async def test_refund_gives_back_what_succeeded_once(sandbox, billing, env, customer):
    declined = await env.run(billing.create_payment_intent, _charge(customer, "pm_card_chargeDeclined"))
    refused = await env.run(billing.create_payment_intent, _charge(customer, "pm_unknown"))
    paid = await env.run(billing.create_payment_intent, _charge(customer, "pm_card_visa", amount=1000))
    req = RefundPayment(
        idempotency_key=f"{uuid.uuid4()}:refund",
        tenant_id=uuid.uuid4(),
        reason="test",
        payment_intent_ids=[declined.payment_intent_id, refused.payment_intent_id, paid.payment_intent_id],
    )
    refunded = await env.run(billing.refund_payment, req)
    assert refunded.amount == 1000 and len(refunded.refund_ids) == 1
    assert await env.run(billing.refund_payment, req) == refunded, "a retry replays, it does not refund twice"
    other_key = await env.run(billing.refund_payment, req.model_copy(update={"idempotency_key": "another"}))
    assert other_key.amount == 0, "nothing left to refund"
    refunds = [r for r in sandbox.objects("refund") if r["payment_intent"] == paid.payment_intent_id]
    assert [r["amount"] for r in refunds] == [1000]


async def test_partial_refund_stops_at_the_amount(sandbox, billing, env, customer):
    a = await env.run(billing.create_payment_intent, _charge(customer, "pm_card_visa", amount=600))
    b = await env.run(billing.create_payment_intent, _charge(customer, "pm_card_visa", amount=600))
    refunded = await env.run(
        billing.refund_payment,
        RefundPayment(
            idempotency_key=f"{uuid.uuid4()}:refund",
            tenant_id=uuid.uuid4(),
            payment_intent_ids=[a.payment_intent_id, b.payment_intent_id],
            amount=900,
            reason="cancel now",
        ),
    )
    assert refunded.amount == 900
    by_pi = {
        r["payment_intent"]: r["amount"]
        for r in sandbox.objects("refund")
        if r["payment_intent"] in (a.payment_intent_id, b.payment_intent_id)
    }
    assert by_pi == {a.payment_intent_id: 600, b.payment_intent_id: 300}


async def test_refund_cancels_an_intent_still_waiting_for_an_outcome(sandbox, billing, env, customer):
    """A 3-D Secure card confirmed off-session by its PaymentIntent id: requires_action until the customer acts."""
    pi = await billing.client.v1.payment_intents.create_async(
        params={
            "amount": 500,
            "currency": "eur",
            "customer": customer,
            "payment_method": "pm_card_threeDSecure2Required",
            "confirm": True,
        }
    )
    assert pi.status == "requires_action"
    refunded = await env.run(
        billing.refund_payment,
        RefundPayment(
            idempotency_key=f"{uuid.uuid4()}:timeout",
            tenant_id=uuid.uuid4(),
            payment_intent_ids=[pi.id],
            reason="no outcome in time",
        ),
    )
    assert refunded.amount == 0
    assert (await billing.client.v1.payment_intents.retrieve_async(pi.id)).status == "canceled"

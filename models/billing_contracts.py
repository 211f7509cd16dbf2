"""Contracts of the billing (Stripe) activities."""

from __future__ import annotations

import uuid

from pydantic import BaseModel


class CreateStripeCustomer(BaseModel):
    tenant_id: uuid.UUID
    name: str
    email: str | None = None
    idempotency_key: str  # from the workflow id + step: a retried create returns the same customer


class StripeCustomer(BaseModel):
    customer_id: str


class DeleteStripeCustomer(BaseModel):
    customer_id: str | None = None  # None when the create's answer was lost: found again by idempotency_key
    tenant_id: uuid.UUID
    idempotency_key: str | None = None

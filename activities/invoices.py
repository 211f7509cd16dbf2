"""Invoices in our database: issue (per-tenant sequential number), declined attempts, void, paid, uncollectible,
their events.

Each change records its domain event in its own transaction (`domain_events` is the outbox): `invoice.paid` is
written with the paid mark, `invoice.uncollectible` with the uncollectible one, so neither can exist without the
other and a retry that finds the invoice already closed records nothing twice.

Each activity is idempotent (Temporal may run it again after a crash) and works inside one tenant's
transaction, so row-level security sees only that tenant's invoices and counter.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models import activity_names as names
from models.billing_cycle_contracts import (
    REFUSED_PAYMENT_PREFIX,
    Invoice,
    IssueInvoice,
    MarkInvoicePaid,
    MarkInvoiceUncollectible,
    RecordDeclinedAttempt,
    VoidInvoice,
)
from models.db import transaction
from models.errors import INVOICE_NOT_FOUND, INVOICE_NOT_OPEN, INVOICE_RACE
from models.events import record_event
from models.tables import Invoice as InvoiceRow
from models.tables import InvoiceCounter, utcnow


class InvoiceActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name=names.ISSUE_INVOICE)
    async def issue_invoice(self, req: IssueInvoice) -> Invoice:
        """The live invoice of this cycle, created with the tenant's next number if there is none yet."""
        try:
            async with transaction(self.engine, tenant_id=req.tenant_id) as db:
                existing = await self._live(db, req.workflow_id)
                if existing is not None:
                    return Invoice(
                        invoice_id=str(existing.id),
                        number=existing.number,
                        status=existing.status,
                        payment_intent_id=existing.payment_intent_id,
                        attempts=existing.attempts,
                    )
                # The counter row is locked until commit: concurrent cycles of a tenant get 1, 2, 3 …
                number = (
                    await db.exec(
                        insert(InvoiceCounter)
                        .values(tenant_id=req.tenant_id, last_number=1)
                        .on_conflict_do_update(
                            index_elements=["tenant_id"], set_={"last_number": InvoiceCounter.last_number + 1}
                        )
                        .returning(col(InvoiceCounter.last_number))
                    )
                ).scalar_one()
                row = InvoiceRow(
                    id=uuid.uuid4(),
                    tenant_id=req.tenant_id,
                    subscription_id=req.subscription_id,
                    number=number,
                    workflow_id=req.workflow_id,
                    kind=req.kind,
                    period_index=req.period_index,
                    period_start=req.period_start,
                    period_end=req.period_end,
                    plan_id=req.plan_id,
                    amount=req.amount,
                    currency=req.currency,
                    status="open",
                )
                db.add(row)
                record_event(
                    db,
                    "invoice.issued",
                    "invoice",
                    row.id,
                    {
                        "number": number,
                        "amount": req.amount,
                        "currency": req.currency,
                        "kind": req.kind,
                        "subscription_id": str(req.subscription_id),
                        "period_index": req.period_index,
                    },
                    tenant_id=req.tenant_id,
                    workflow_id=req.workflow_id,
                )
                return Invoice(invoice_id=str(row.id), number=number)
        except IntegrityError:
            # A concurrent attempt of this same activity issued it first: the retry will find it.
            raise ApplicationError("invoice issued concurrently; retrying", type=INVOICE_RACE) from None

    @activity.defn(name=names.VOID_INVOICE)
    async def void_invoice(self, req: VoidInvoice) -> None:
        """Compensation: void the cycle's invoice (found by id, or by workflow id if issuing's answer was lost)."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            row = (
                await db.get(InvoiceRow, uuid.UUID(req.invoice_id))
                if req.invoice_id
                else await self._live(db, req.workflow_id)
            )
            if row is None or row.status == "void":
                return
            row.status, row.void_reason, row.closed_at = "void", req.reason[:500], utcnow()
            db.add(row)
            record_event(
                db,
                "invoice.voided",
                "invoice",
                row.id,
                {"number": row.number, "reason": row.void_reason},
                tenant_id=req.tenant_id,
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=names.MARK_INVOICE_PAID)
    async def mark_invoice_paid(self, req: MarkInvoicePaid) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            row = await self._get(db, req.invoice_id)
            if row.status == "paid" and row.payment_intent_id == req.payment_intent_id:
                return
            if row.status != "open":
                raise ApplicationError(
                    f"invoice {row.number} is {row.status}, cannot be paid", type=INVOICE_NOT_OPEN, non_retryable=True
                )
            row.status, row.payment_intent_id, row.closed_at = "paid", req.payment_intent_id, utcnow()
            row.next_retry_at = None
            if req.attempts is not None:
                row.attempts = req.attempts
            db.add(row)
            _record_closed(db, row, "invoice.paid", req.workflow_id)

    @activity.defn(name=names.RECORD_DECLINED_ATTEMPT)
    async def record_declined_attempt(self, req: RecordDeclinedAttempt) -> None:
        """The open invoice shows its last declined attempt (code, PaymentIntent, count) and the next retry."""
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            row = await self._get(db, req.invoice_id)
            if row.status != "open" or row.attempts == req.attempt:
                return  # closed meanwhile, or a retry of this same record
            refused = req.payment_intent_id.startswith(REFUSED_PAYMENT_PREFIX)  # no PaymentIntent to point at
            row.attempts, row.decline_code, row.next_retry_at = req.attempt, req.decline_code, req.next_retry_at
            row.payment_intent_id = None if refused else req.payment_intent_id
            db.add(row)
            record_event(
                db,
                "invoice.payment_failed",
                "invoice",
                row.id,
                {
                    "number": row.number,
                    "attempt": req.attempt,
                    "decline_code": req.decline_code,
                    "payment_intent_id": row.payment_intent_id,
                    "next_retry_at": req.next_retry_at.isoformat() if req.next_retry_at else None,
                },
                tenant_id=req.tenant_id,
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=names.MARK_INVOICE_UNCOLLECTIBLE)
    async def mark_invoice_uncollectible(self, req: MarkInvoiceUncollectible) -> None:
        async with transaction(self.engine, tenant_id=req.tenant_id) as db:
            row = await self._get(db, req.invoice_id)
            if row.status == "uncollectible":
                return
            if row.status != "open":
                raise ApplicationError(
                    f"invoice {row.number} is {row.status}, cannot be uncollectible",
                    type=INVOICE_NOT_OPEN,
                    non_retryable=True,
                )
            row.status, row.decline_code, row.closed_at = "uncollectible", req.decline_code, utcnow()
            row.next_retry_at = None
            db.add(row)
            _record_closed(db, row, "invoice.uncollectible", req.workflow_id)

    @staticmethod
    async def _live(db, workflow_id: str) -> InvoiceRow | None:
        return (
            await db.exec(select(InvoiceRow).where(InvoiceRow.workflow_id == workflow_id, InvoiceRow.status != "void"))
        ).first()

    @staticmethod
    async def _get(db, invoice_id: str) -> InvoiceRow:
        row = await db.get(InvoiceRow, uuid.UUID(invoice_id))
        if row is None:
            raise ApplicationError(f"invoice {invoice_id} not found", type=INVOICE_NOT_FOUND, non_retryable=True)
        return row


def _record_closed(
    db, row: InvoiceRow, event_type: Literal["invoice.paid", "invoice.uncollectible"], workflow_id: str
) -> None:
    """The event of an invoice closing, in the transaction that closes it (the row is the source of its fields)."""
    record_event(
        db,
        event_type,
        "invoice",
        row.id,
        {
            "number": row.number,
            "amount": row.amount,
            "currency": row.currency,
            "subscription_id": str(row.subscription_id),
            "payment_intent_id": row.payment_intent_id if event_type == "invoice.paid" else None,
            "attempts": row.attempts,
        },
        tenant_id=row.tenant_id,
        workflow_id=workflow_id,
    )

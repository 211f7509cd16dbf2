"""/v1/customers: create, retrieve, update, delete, list, search — with Stripe's object shape."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import StripeError, resource_missing

router = APIRouter(prefix="/v1/customers", tags=["customers"])

KIND = "customer"
WRITABLE = {
    "address",
    "balance",
    "description",
    "email",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "cash_balance",
}


def new_customer(call: Call) -> dict[str, Any]:
    p = call.params
    P.check_known(p, WRITABLE)
    customer_id = call.store.new_id("cus", 14)
    return {
        "id": customer_id,
        "object": "customer",
        "address": p.get("address") or None,
        "balance": P.integer(p, "balance") or 0,
        "created": int(time.time()),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": P.nullable_string(p, "description"),
        "discount": None,
        "email": P.email(p),
        "invoice_prefix": P.string(p, "invoice_prefix") or customer_id[4:12].upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": P.metadata(p.get("metadata")),
        "name": P.nullable_string(p, "name", max_length=256),
        "next_invoice_sequence": P.integer(p, "next_invoice_sequence", minimum=1) or 1,
        "phone": P.nullable_string(p, "phone", max_length=20),
        "preferred_locales": p.get("preferred_locales") or [],
        "shipping": p.get("shipping") or None,
        "tax_exempt": P.string(p, "tax_exempt") or "none",
        "test_clock": None,
    }


def load(call: Call, customer_id: str) -> dict[str, Any]:
    customer = call.store.get(KIND, call.account, customer_id)
    if customer is None:
        raise resource_missing("customer", customer_id)
    return customer


@router.post("")
async def create_customer(call: Call = Depends(current_call)) -> dict[str, Any]:
    customer = call.store.put(KIND, call.account, new_customer(call))
    call.emit("customer.created", customer)
    return customer


@router.get("")
async def list_customers(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"limit", "starting_after", "ending_before", "email", "created", "test_clock"})
    customers = [c for c in call.store.list(KIND, call.account) if not c.get("deleted")]
    email = P.string(call.params, "email", max_length=512)
    if email is not None:
        customers = [c for c in customers if c.get("email") == email]  # Stripe: exact, case-sensitive
    return P.paginate(customers, call.params, "/v1/customers")


@router.get("/search")
async def search_customers(call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, {"query", "limit", "page"})
    query = P.string(call.params, "query", required=True)
    assert query is not None
    match = compile_query(query)
    limit = P.integer(call.params, "limit") or 10
    found = [c for c in call.store.list(KIND, call.account) if not c.get("deleted") and match(c)]
    return {
        "object": "search_result",
        "url": "/v1/customers/search",
        "has_more": len(found) > limit,
        "next_page": None,
        "data": found[:limit],
    }


@router.get("/{customer_id}")
async def retrieve_customer(customer_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    return load(call, customer_id)  # a deleted customer is {"id", "object", "deleted": true}, as in Stripe


@router.post("/{customer_id}")
async def update_customer(customer_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    customer = dict(load(call, customer_id))
    if customer.get("deleted"):
        raise StripeError(400, "You cannot update a deleted customer.", code="resource_missing", param="id")
    p = call.params
    P.check_known(p, WRITABLE)
    if "email" in p:
        customer["email"] = P.email(p)
    for name, limit in (("name", 256), ("description", 5000), ("phone", 20)):
        if name in p:
            customer[name] = P.nullable_string(p, name, max_length=limit)
    if "metadata" in p:
        customer["metadata"] = P.metadata(p["metadata"], customer.get("metadata"))
    if "balance" in p:
        customer["balance"] = P.integer(p, "balance")
    if "invoice_settings" in p and isinstance(p["invoice_settings"], dict):
        settings = dict(customer["invoice_settings"])
        for key, value in p["invoice_settings"].items():
            settings[key] = value or None
        customer["invoice_settings"] = settings
    call.store.put(KIND, call.account, customer)
    call.emit("customer.updated", customer)
    return customer


@router.delete("/{customer_id}")
async def delete_customer(customer_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    customer = load(call, customer_id)
    if customer.get("deleted"):
        raise resource_missing("customer", customer_id)  # Stripe: deleting twice is a 404
    tombstone = {"id": customer_id, "object": "customer", "deleted": True}
    call.store.put(KIND, call.account, tombstone)
    call.emit("customer.deleted", customer)
    return tombstone


# --- the search query language (the subset ProgNetwork needs) ---------------------------------------------

_CLAUSE = re.compile(r"""^\s*(-)?(metadata\[['"]([^'"]+)['"]\]|[a-z_]+)\s*:\s*['"]([^'"]*)['"]\s*$""")


def compile_query(query: str):
    """`email:'a@b.c'`, `name:'Acme'`, `metadata['tenant_id']:'…'`, a leading `-` negates; joined by AND or OR
    (not both, as in Stripe)."""
    has_and, has_or = " AND " in query, " OR " in query
    if has_and and has_or:
        raise StripeError(400, "Search queries cannot mix AND and OR.", code="parameter_invalid", param="query")
    parts = query.split(" OR ") if has_or else query.split(" AND ")
    clauses = []
    for part in parts:
        m = _CLAUSE.match(part)
        if not m:
            raise StripeError(
                400,
                f"Invalid search query: {query!r} (the sandbox supports field:'value' clauses)",
                code="parameter_invalid",
                param="query",
            )
        negate, field, meta_key, value = bool(m.group(1)), m.group(2), m.group(3), m.group(4)
        if meta_key is None and field not in {"email", "name", "phone", "created"}:
            raise StripeError(
                400, f"Field '{field}' is an unsupported search field.", code="parameter_invalid", param="query"
            )
        clauses.append((negate, field, meta_key, value))

    def matches(customer: dict[str, Any]) -> bool:
        results = []
        for negate, field, meta_key, value in clauses:
            actual = (customer.get("metadata") or {}).get(meta_key) if meta_key else customer.get(field)
            results.append((str(actual) == value if actual is not None else False) != negate)
        return any(results) if has_or else all(results)

    return matches

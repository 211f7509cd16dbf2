"""Subscribing, waiting for a subscription's state and cancelling it over HTTP: shared by the subscription tests
and the other API tests that need a paid tenant (the 60-second dev plan has no trial: subscribing charges)."""

from __future__ import annotations

import asyncio

PLAN = "dev-minutely"


async def subscribe(api, owner, tenant_id: str, payment_method: str = "pm_card_visa", plan: str = PLAN) -> dict:
    response = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions",
        json={"plan": plan, "payment_method": payment_method},
        headers=owner.headers,
    )
    assert response.status_code == 202, response.text
    return response.json()


async def wait_subscription(api, who, tenant_id: str, sub_id: str, predicate, timeout: float = 30.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await api.get(f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}", headers=who.headers)
        assert response.status_code == 200, response.text
        if predicate(response.json()):
            return response.json()
        assert asyncio.get_running_loop().time() < deadline, f"subscription never got there: {response.text}"
        await asyncio.sleep(0.2)


async def end(api, owner, tenant_id: str, sub_id: str) -> dict:
    response = await api.post(
        f"/v1/tenants/{tenant_id}/subscriptions/{sub_id}/cancel", json={"at_period_end": False}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"  # answered once applied
    return await wait_subscription(api, owner, tenant_id, sub_id, lambda s: s["status"] == "canceled")

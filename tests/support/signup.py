"""The body of a paid sign-up request, shared by the sign-up and TenantId tests."""

from __future__ import annotations

import uuid

from tests.api.conftest import PASSWORD, new_slug

SIGNUP_PLAN = "dev-minutely"


def signup_body(**changes) -> dict:
    return {
        "email": f"signup-{uuid.uuid4().hex[:10]}@example.com",
        "password": PASSWORD,
        "display_name": "Ada",
        "tenant_name": "Acme Labs",
        "slug": new_slug("signup"),
        "plan": SIGNUP_PLAN,
        "payment_method": "pm_card_visa",
        **changes,
    }

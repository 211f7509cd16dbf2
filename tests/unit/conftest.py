"""Fixtures of the Stripe activity tests: an in-process Stripe sandbox per module and the activities on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import ActivityEnvironment

from activities.billing import BillingActivities
from prognet.settings import Settings
from prognet_dev.stripe_sandbox import StripeSandbox

STRIPE_KEY = "sk_test_activities"


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[StripeSandbox]:
    async with StripeSandbox(port=0) as sb:
        yield sb


@pytest.fixture
def billing(sandbox: StripeSandbox) -> BillingActivities:
    return BillingActivities(Settings(stripe_api_base=sandbox.api_base, stripe_secret_key=STRIPE_KEY))


@pytest.fixture
def env() -> ActivityEnvironment:
    return ActivityEnvironment()

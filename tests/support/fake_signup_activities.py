"""One fake world for the paid sign-up: the user, tenant and billing fakes sharing one ordered call log, plus
`tenants.discard_tenant`, and a view of what is left behind (user, token, tenant, Stripe customer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity

from models import activity_names as act
from models.signup_contracts import DiscardTenant
from tests.support.fake_activities import FakeUsers
from tests.support.fake_billing_activities import FakeBillingWorld
from tests.support.fake_tenant_activities import FakeTenantWorld


@dataclass
class FakeSignupWorld:
    users: FakeUsers
    tenants: FakeTenantWorld
    billing: FakeBillingWorld
    calls: list[str]
    discarded: list[DiscardTenant] = field(default_factory=list)

    @classmethod
    def create(
        cls, *, users: dict | None = None, tenants: dict | None = None, billing: dict | None = None
    ) -> FakeSignupWorld:
        calls: list[str] = []  # one log, in the order the activities ran across all three fakes
        return cls(
            users=FakeUsers(calls=calls, **(users or {})),
            tenants=FakeTenantWorld(calls=calls, **(tenants or {})),
            billing=FakeBillingWorld(calls=calls, **(billing or {})),
            calls=calls,
        )

    def activities(self) -> list:
        @activity.defn(name=act.DISCARD_TENANT)
        async def discard_tenant(req: DiscardTenant) -> None:
            self.calls.append(act.DISCARD_TENANT)
            self.discarded.append(req)

        # one email hand-off for all: the billing world's, which records its calls and starts the email the same way
        def without_handoff(activities: list) -> list:
            return [fn for fn in activities if getattr(fn, "__name__", None) != "start_delivery"]

        users, tenants = without_handoff(self.users.activities()), without_handoff(self.tenants.activities())
        return [*users, *tenants, *self.billing.activities(), discard_tenant]

    # --- what is left behind, read from the call log ---

    def _after(self, made: str, undone: str) -> bool:
        """`made` ran and no `undone` ran after its last run."""
        if made not in self.calls:
            return False
        last_made = len(self.calls) - 1 - self.calls[::-1].index(made)
        return undone not in self.calls[last_made:]

    @property
    def pending_user_exists(self) -> bool:
        return (
            self._after(act.CREATE_PENDING_USER, act.DELETE_PENDING_USER)
            and self.users.fail_step != act.CREATE_PENDING_USER
        )

    @property
    def token_live(self) -> bool:
        return self._after(act.ISSUE_VERIFICATION_TOKEN, act.REVOKE_VERIFICATION_TOKEN)

    @property
    def tenant_exists(self) -> bool:
        return self._after(act.CREATE_TENANT, act.DISCARD_TENANT) and self.tenants.fail_step != act.CREATE_TENANT

    @property
    def stripe_customer_exists(self) -> bool:
        return self._after(act.CREATE_STRIPE_CUSTOMER, act.DELETE_STRIPE_CUSTOMER)

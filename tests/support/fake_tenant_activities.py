"""Stand-ins for the tenant provisioning and invitation activities, under the real activity names.

Every call is recorded in order; `fail_step` makes one activity fail permanently, `broken_compensation`
makes one fail until `healed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email_handoff import EmailHandoff
from models import activity_names as act
from models.billing_contracts import CreateStripeCustomer, DeleteStripeCustomer, StripeCustomer
from models.contracts import (
    CloseInvitation,
    CompleteInvitation,
    CreateBillingConfig,
    CreateTenant,
    IssueInvitation,
    MarkTenantFailed,
    MembershipRef,
    TenantRef,
)


@dataclass
class FakeTenantWorld:
    fail_step: str | None = None
    fail_with_type: str = "Boom"
    broken_compensation: str | None = None
    healed: bool = False
    calls: list[str] = field(default_factory=list)
    args: dict[str, list] = field(default_factory=dict)

    def _record(self, name: str, arg) -> None:
        self.calls.append(name)
        self.args.setdefault(name, []).append(arg)
        if name == self.fail_step:
            raise ApplicationError(f"{name} failed on purpose", type=self.fail_with_type, non_retryable=True)
        if name == self.broken_compensation and not self.healed:
            raise ApplicationError(f"{name} is broken", type="CompensationBroken", non_retryable=True)

    def activities(self) -> list:
        def simple(name: str, arg_type):
            async def run(arg) -> None:
                self._record(name, arg)

            run.__annotations__ = {"arg": arg_type, "return": None}
            return activity.defn(name=name)(run)

        @activity.defn(name=act.CREATE_STRIPE_CUSTOMER)
        async def create_stripe_customer(req: CreateStripeCustomer) -> StripeCustomer:
            self._record(act.CREATE_STRIPE_CUSTOMER, req)
            return StripeCustomer(customer_id="cus_fake123")

        return [
            simple(act.CREATE_TENANT, CreateTenant),
            simple(act.MARK_TENANT_FAILED, MarkTenantFailed),
            simple(act.ADD_MEMBERSHIP, MembershipRef),
            simple(act.REMOVE_MEMBERSHIP, MembershipRef),
            create_stripe_customer,
            simple(act.DELETE_STRIPE_CUSTOMER, DeleteStripeCustomer),
            simple(act.CREATE_BILLING_CONFIG, CreateBillingConfig),
            simple(act.DELETE_BILLING_CONFIG, TenantRef),
            simple(act.APPLY_DEFAULT_SETTINGS, TenantRef),
            simple(act.REMOVE_DEFAULT_SETTINGS, TenantRef),
            simple(act.ACTIVATE_TENANT, TenantRef),
            simple(act.ISSUE_INVITATION, IssueInvitation),
            simple(act.COMPLETE_INVITATION, CompleteInvitation),
            simple(act.CLOSE_INVITATION, CloseInvitation),
            EmailHandoff().start_delivery,  # the real one: it starts the (fake) delivery through the worker's client
        ]

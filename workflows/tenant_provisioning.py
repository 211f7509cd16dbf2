"""Tenant provisioning saga: tenant row → owner membership → Stripe customer → billing config → default
settings → active (the pivot) → welcome email.

Any failure before activation (including a permanent Stripe error) or a cancellation unwinds what was done, in reverse:
settings and billing config removed, Stripe customer deleted, membership removed, tenant marked `failed`
with the reason. A taken slug ends the saga at once, before anything was created (a synchronous 409).
"""

from __future__ import annotations

import uuid

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.billing_contracts import CreateStripeCustomer, DeleteStripeCustomer, StripeCustomer
    from models.contracts import (
        CreateBillingConfig,
        CreateTenant,
        EmailRequest,
        MarkTenantFailed,
        MembershipRef,
        TenantAccepted,
        TenantProvisioningInput,
        TenantProvisioningResult,
        TenantRef,
    )
    from models.errors import SLUG_TAKEN, TENANT_FAILED, error_type
    from models.names import (
        TENANT_PROVISIONING_WORKFLOW,
        UPDATE_TENANT_ACCEPTED,
        email_message_id,
        tenant_workflow_id,
    )
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga


@workflow.defn(name=TENANT_PROVISIONING_WORKFLOW)
class TenantProvisioningWorkflow:
    @workflow.init
    def __init__(self, params: TenantProvisioningInput) -> None:
        self.saga = Saga("tenant_provisioning", params.retry_policies)
        self.params = params
        self.tenant_created = False
        self.activated = False  # the tenant row says active: past the pivot, a replayed request is told so
        self.rejection: ApplicationError | None = None
        self.customer_id: str | None = None

    @workflow.run
    async def run(self, params: TenantProvisioningInput) -> TenantProvisioningResult:
        wid = workflow.info().workflow_id
        try:
            await self.saga.step(
                "create_tenant",
                act.CREATE_TENANT,
                CreateTenant(
                    tenant_id=params.tenant_id,
                    name=params.name,
                    slug=params.slug,
                    created_by=params.owner_user_id,
                    workflow_id=wid,
                ),
                compensation=(act.MARK_TENANT_FAILED, self._failure),
            )
        except ActivityError as err:
            if error_type(err) == SLUG_TAKEN:
                self.rejection = ApplicationError("this slug is already taken", type=SLUG_TAKEN, non_retryable=True)
                await self.saga.reject(self.rejection, "slug already taken; nothing created")
            self.rejection = ApplicationError("the tenant could not be created", type=TENANT_FAILED, non_retryable=True)
            await self.saga.abort(err)
        self.tenant_created = True
        return await self.saga.run(self._provision)

    async def _provision(self) -> TenantProvisioningResult:
        p, wid = self.params, workflow.info().workflow_id
        tenant = TenantRef(tenant_id=p.tenant_id, workflow_id=wid)
        await self.saga.step(
            "add_owner_membership",
            act.ADD_MEMBERSHIP,
            MembershipRef(tenant_id=p.tenant_id, user_id=p.owner_user_id, role="owner"),
            compensation=(act.REMOVE_MEMBERSHIP, MembershipRef(tenant_id=p.tenant_id, user_id=p.owner_user_id)),
        )
        # The idempotency key comes from the workflow id and the step: stable across retries and resets.
        idempotency_key = f"{wid}:create_stripe_customer"
        customer: StripeCustomer = await self.saga.step(
            "create_stripe_customer",
            act.CREATE_STRIPE_CUSTOMER,
            CreateStripeCustomer(
                tenant_id=p.tenant_id, name=p.name, email=p.billing_email, idempotency_key=idempotency_key
            ),
            compensation=(
                act.DELETE_STRIPE_CUSTOMER,
                lambda: DeleteStripeCustomer(
                    customer_id=self.customer_id, tenant_id=p.tenant_id, idempotency_key=idempotency_key
                ),
            ),
            result_type=StripeCustomer,
        )
        self.customer_id = customer.customer_id
        await self.saga.step(
            "create_billing_config",
            act.CREATE_BILLING_CONFIG,
            CreateBillingConfig(
                tenant_id=p.tenant_id,
                stripe_customer_id=customer.customer_id,
                currency=p.currency,
                billing_email=p.billing_email,
            ),
            compensation=(act.DELETE_BILLING_CONFIG, tenant),
        )
        await self.saga.step(
            "apply_default_settings",
            act.APPLY_DEFAULT_SETTINGS,
            tenant,
            compensation=(act.REMOVE_DEFAULT_SETTINGS, tenant),
        )
        await self.saga.step("activate_tenant", act.ACTIVATE_TENANT, tenant)
        self.activated = True
        # Active: nothing unwinds the tenant any more, so the welcome email (which cannot be taken back) goes now.
        # A paid sign-up sends it itself, once its own pivot (the first payment) has passed.
        self.saga.pivot("activate_tenant")
        if p.send_welcome_email:
            await self.saga.forward(
                lambda: hand_off_email(self.saga, "send_welcome_email", welcome_email(p.tenant_id, p.owner_user_id))
            )
        self.saga.complete("tenant active")
        return TenantProvisioningResult(tenant_id=p.tenant_id, status="active", stripe_customer_id=customer.customer_id)

    def _failure(self) -> MarkTenantFailed:
        return MarkTenantFailed(
            tenant_id=self.params.tenant_id,
            reason=self.saga.state.error or "unknown",
            workflow_id=workflow.info().workflow_id,
        )

    @workflow.update(name=UPDATE_TENANT_ACCEPTED)
    async def accepted(self) -> TenantAccepted:
        """Answers once the tenant row exists, so a taken slug is a synchronous 409 for the API."""
        await workflow.wait_condition(lambda: self.tenant_created or self.rejection is not None)
        if self.rejection is not None:
            raise self.rejection
        return TenantAccepted(tenant_id=self.params.tenant_id, status="active" if self.activated else "provisioning")


def welcome_email(tenant_id: uuid.UUID, owner_user_id: uuid.UUID) -> EmailRequest:
    """The welcome email of a new tenant; its message id comes from the provisioning saga's id, whoever sends it."""
    return EmailRequest(
        message_id=email_message_id(tenant_workflow_id(tenant_id), "welcome"),
        template="welcome",
        tenant_id=tenant_id,
        to_user_id=owner_user_id,
    )

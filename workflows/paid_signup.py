"""Paid sign-up: `signup-{user_id}` — the seed's distributed transaction (user + tenant + first payment).

One parent saga over three child workflows (Registration, TenantProvisioning, BillingCycle), then the
Subscription; the README's "Paid sign-up" table lists each step and what undoes it. The first payment is the
pivot: the children hold their emails (verification, welcome) and this saga releases them once it is paid.

A declined first payment, a failure of any child or a cancellation unwinds everything; a taken email ends the
saga before anything exists, a taken slug unwinds the registration. The `outcome` update answers once the saga
is decided (the API's update-with-start), the `signup_outcome` query at any time. The saga ends failed with a
non-retryable ApplicationError whose type says why (`PaymentDeclined` with the decline code as its details,
`EmailAlreadyRegistered`, `SlugTaken`, `SignupFailed`); no PII in errors, ids or search attributes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.billing_calendar import advance
    from models.billing_contracts import DeleteStripeCustomer
    from models.billing_cycle_contracts import (
        BillingCycleInput,
        BillingCycleResult,
        CycleStatusChanged,
        PeriodPayment,
        SetSubscriptionStatus,
        SubscriptionInput,
        SubscriptionState,
    )
    from models.contracts import RegistrationInput, TenantProvisioningInput, TenantProvisioningResult
    from models.errors import EMAIL_TAKEN, PAYMENT_DECLINED, SIGNUP_FAILED, SLUG_TAKEN, error_type, failure_cause
    from models.names import (
        BILLING_CYCLE_WORKFLOW,
        PAID_SIGNUP_WORKFLOW,
        QUERY_SIGNUP_OUTCOME,
        REGISTRATION_WORKFLOW,
        SA_SUBSCRIPTION_ID,
        SA_TENANT_ID,
        SA_USER_ID,
        SIGNAL_BILLING_CYCLE_STATUS,
        SIGNAL_REGISTRATION_PROGRESS,
        SIGNAL_SEND_VERIFICATION_EMAIL,
        SUBSCRIPTION_WORKFLOW,
        TENANT_PROVISIONING_WORKFLOW,
        UPDATE_SIGNUP_OUTCOME,
        billing_cycle_workflow_id,
        registration_workflow_id,
        subscription_workflow_id,
        tenant_workflow_id,
    )
    from models.signup_contracts import DiscardTenant, PaidSignupInput, RegistrationProgress, SignupOutcome
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga, describe_error
    from workflows.tenant_provisioning import welcome_email

MAX_REASON = 300


@workflow.defn(name=PAID_SIGNUP_WORKFLOW)
class PaidSignupWorkflow:
    @workflow.init
    def __init__(self, params: PaidSignupInput) -> None:
        self.params = params
        self.saga = Saga("paid_signup", params.retry_policies)
        self.registration: workflow.ChildWorkflowHandle | None = None
        self.progress: RegistrationProgress | None = None
        self.outcome: SignupOutcome | None = None
        self.customer_id: str | None = None
        self.cycle_statuses: list[CycleStatusChanged] = []

    @workflow.run
    async def run(self, params: PaidSignupInput) -> SignupOutcome:
        try:
            return await self._signup()
        except GeneratorExit:
            raise  # the worker is dropping this workflow from memory: not a failure (see Saga.run)
        except BaseException as err:
            if self.outcome is not None:  # rejected before anything was created: nothing to undo
                raise
            await self._unwind(err)
            raise self._final_error(err) from None

    # --- forward steps ---

    async def _signup(self) -> SignupOutcome:
        p = self.params
        await self._register()
        tenant = await self._provision_tenant()
        self.customer_id = tenant.stripe_customer_id
        # Registered now that the customer id is known (a failing provisioning deleted its customer itself).
        self.saga.add_compensation(
            "stripe_customer",
            act.DELETE_STRIPE_CUSTOMER,
            DeleteStripeCustomer(
                customer_id=tenant.stripe_customer_id,
                tenant_id=p.tenant_id,
                idempotency_key=f"{self._wid()}:delete_stripe_customer",
            ),
        )

        now = workflow.now()
        seed: SubscriptionState | None = None
        if p.plan.trial_days == 0:
            paid = seed = await self._first_payment(now, advance(now, p.plan, 1))
            # Paid: the sign-up is not unwound any more. The rest is retried until it succeeds.
            self.saga.pivot("first_payment")
            await self.saga.forward(lambda: self._start_subscription(paid))
        else:
            await self._start_subscription(None)
            self.saga.pivot("start_subscription")  # nothing to pay: the started trial is the point of no return
        # Only now does the customer hear from us: a declined or unwound sign-up has emailed no one.
        await self.saga.forward(self._send_held_emails)

        self.outcome = self._outcome("active", subscription_status="active" if seed else "trialing")
        self.saga.complete(
            f"signed up: tenant {p.tenant_id}, subscription {p.subscription_id} "
            f"({self.outcome.subscription_status}); the user verifies their email to log in"
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.outcome

    async def _register(self) -> None:
        p = self.params
        # ABANDON: on success the registration outlives this saga (it waits for the email verification); the
        # unwind cancels it explicitly and waits for its own compensation (pending user deleted, token revoked).
        # It holds its verification email until this saga is paid, so it cannot complete before then.
        self.registration = await self.saga.start_child(
            "register_user",
            REGISTRATION_WORKFLOW,
            RegistrationInput(
                user_id=p.user_id,
                email=p.email,
                display_name=p.display_name,
                password_hash=p.password_hash,
                verification_timeout_seconds=p.verification_timeout_seconds,
                hold_verification_email=True,
            ),
            id=registration_workflow_id(p.user_id),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            parent_close_policy=ParentClosePolicy.ABANDON,
            # TenantId too: the user is created for this tenant (and its verification email inherits it)
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_TENANT_ID, str(p.tenant_id)),
                    SearchAttributePair(SA_USER_ID, str(p.user_id)),
                ]
            ),
            static_summary=f"Registration of user {p.user_id} (paid sign-up {self._wid()})",
            cancel_on_unwind=True,
        )
        self.saga.set_status(
            "waiting", step="register_user", waiting_for="the registration child to create the pending user"
        )
        registration = self.registration
        await workflow.wait_condition(lambda: self.progress is not None or registration.done())
        if self.progress is None:
            await registration  # it ended before telling us: raises its failure (it unwound itself)
            raise ApplicationError(
                "the registration ended before creating the user", type=SIGNUP_FAILED, non_retryable=True
            )
        if self.progress.status == "rejected":
            try:
                await registration
            except ChildWorkflowError:
                pass  # it ended on the taken email, as expected; nothing was created
            self.saga.not_needed("register_user")
            error_type = self.progress.error_type or EMAIL_TAKEN
            self.outcome = self._outcome("rejected", error_type=error_type, reason="this email is already registered")
            await self.saga.reject(
                ApplicationError("this email is already registered", type=error_type, non_retryable=True),
                "email already registered; nothing created",
            )
        self.saga.step_done("register_user")

    async def _provision_tenant(self) -> TenantProvisioningResult:
        p = self.params
        try:
            # The compensation is registered before the child starts: whatever it left (even a `failed` row,
            # which references the user) is deleted before the user is.
            tenant: TenantProvisioningResult = await self.saga.child_step(
                "provision_tenant",
                TENANT_PROVISIONING_WORKFLOW,
                TenantProvisioningInput(
                    tenant_id=p.tenant_id,
                    name=p.tenant_name,
                    slug=p.slug,
                    owner_user_id=p.user_id,
                    billing_email=p.email,
                    currency=p.plan.currency,
                    send_welcome_email=False,
                ),
                compensation=(
                    act.DISCARD_TENANT,
                    lambda: DiscardTenant(
                        tenant_id=p.tenant_id,
                        workflow_id=self._wid(),
                        reason=(self.saga.state.error or "paid sign-up unwound")[:MAX_REASON],
                    ),
                ),
                id=tenant_workflow_id(p.tenant_id),
                result_type=TenantProvisioningResult,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SA_TENANT_ID, str(p.tenant_id)),
                        SearchAttributePair(SA_USER_ID, str(p.user_id)),
                    ]
                ),
                static_summary=f"Provisioning of tenant {p.tenant_id} (paid sign-up {self._wid()})",
            )
        except ChildWorkflowError as err:
            if error_type(err) == SLUG_TAKEN:
                raise ApplicationError("this slug is already taken", type=SLUG_TAKEN, non_retryable=True) from err
            raise
        return tenant

    async def _first_payment(self, start: datetime, end: datetime) -> SubscriptionState:
        """Bill period 0 now; a decline is final (no dunning). Returns the subscription's seed state."""
        p, wid = self.params, self._wid()
        cycle_id = billing_cycle_workflow_id(p.subscription_id, 0)
        cycle = await self.saga.start_child(
            "first_payment",
            BILLING_CYCLE_WORKFLOW,
            BillingCycleInput(
                subscription_id=p.subscription_id,
                tenant_id=p.tenant_id,
                plan_id=p.plan.id,
                amount=p.plan.amount,
                currency=p.plan.currency,
                period_index=0,
                period_start=start,
                period_end=end,
                payment_method=p.payment_method,
                stripe_customer_id=self.customer_id,
                notify_user_id=p.user_id,
                kind="period",
                dunning_schedule_days=[],
                poll_interval_seconds=p.poll_interval_seconds,
                payment_timeout_seconds=p.payment_timeout_seconds,
                notify_unpaid=False,
            ),
            id=cycle_id,
            result_type=BillingCycleResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_TENANT_ID, str(p.tenant_id)),
                    SearchAttributePair(SA_SUBSCRIPTION_ID, str(p.subscription_id)),
                ]
            ),
            static_summary=f"First payment of subscription {p.subscription_id} (paid sign-up {wid})",
        )
        self.saga.set_status("waiting", step="first_payment", waiting_for=f"the first payment ({cycle_id})")
        result: BillingCycleResult = await cycle
        if result.status != "paid":
            raise ApplicationError(
                "the first payment was declined", result.decline_code, type=PAYMENT_DECLINED, non_retryable=True
            )
        self.saga.step_done("first_payment")
        return SubscriptionState(
            subscription_id=p.subscription_id,
            tenant_id=p.tenant_id,
            status="active",
            plan=p.plan,
            payment_method=p.payment_method,
            stripe_customer_id=self.customer_id,
            notify_user_id=p.user_id,
            anchor=start,
            anchor_index=0,
            period_index=0,
            current_period_start=start,
            current_period_end=end,
            paid_through=end,
            cycles_paid=1,
            period_payments=[PeriodPayment(payment_intent_id=result.payment_intent_id, amount=result.amount)],
        )

    async def _start_subscription(self, seed: SubscriptionState | None) -> None:
        p = self.params
        if seed is not None:
            # The subscription starts mid-period (period 0 already paid): its read model is written here, at
            # once, so the API shows it active (a subscription in trial writes `trialing` itself). The row goes
            # with the tenant if anything later unwinds.
            await self.saga.step(
                "record_subscription",
                act.SET_SUBSCRIPTION_STATUS,
                SetSubscriptionStatus(
                    subscription_id=p.subscription_id,
                    tenant_id=p.tenant_id,
                    status="active",
                    plan_id=p.plan.id,
                    current_period_start=seed.current_period_start,
                    current_period_end=seed.current_period_end,
                    payment_method=p.payment_method,
                    workflow_id=subscription_workflow_id(p.subscription_id),
                ),
            )
        try:
            await self.saga.start_child(
                "start_subscription",
                SUBSCRIPTION_WORKFLOW,
                SubscriptionInput(
                    subscription_id=p.subscription_id,
                    tenant_id=p.tenant_id,
                    plan=p.plan,
                    payment_method=p.payment_method,
                    stripe_customer_id=self.customer_id,
                    notify_user_id=p.user_id,
                    cycle_driver="schedule",
                    state=seed,
                    dunning_schedule_days=p.dunning_schedule_days,
                    poll_interval_seconds=p.subscription_poll_seconds,
                ),
                id=subscription_workflow_id(p.subscription_id),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(SA_TENANT_ID, str(p.tenant_id)),
                        SearchAttributePair(SA_SUBSCRIPTION_ID, str(p.subscription_id)),
                    ]
                ),
                static_summary=f"Subscription {p.subscription_id} to {p.plan.id} (paid sign-up {self._wid()})",
            )
        except WorkflowAlreadyStartedError:
            pass  # started by an earlier run of this saga (a reset): it is the same subscription
        self.saga.step_done("start_subscription")

    async def _send_held_emails(self) -> None:
        """The emails the children held back: the registration's verification email (it is told to send it) and
        the tenant's welcome email (sent from here, under the message id the tenant saga would have used)."""
        p, registration = self.params, self.registration
        assert registration is not None, "the registration child started first"
        self.saga.set_status("running", step="send_verification_email", details="telling the registration to send")
        try:
            await registration.signal(SIGNAL_SEND_VERIFICATION_EMAIL)
        except Exception:  # it ended (expired or was cancelled by hand): there is no token left to send
            workflow.logger.warning("registration %s did not take the send_verification_email signal", registration.id)
        self.saga.step_done("send_verification_email")
        await hand_off_email(self.saga, "send_welcome_email", welcome_email(p.tenant_id, p.user_id))

    # --- unwinding ---

    async def _unwind(self, err: BaseException) -> None:
        """Compensations in reverse (Stripe customer, tenant, the registration); cancellation cannot
        interrupt it. The outcome is set once everything is undone."""
        self.saga.state.error = describe_error(failure_cause(err))[:MAX_REASON]
        await self.saga.compensate("compensated")
        self.outcome = self._outcome_of(err)
        await workflow.wait_condition(workflow.all_handlers_finished)

    def _outcome_of(self, err: BaseException) -> SignupOutcome:
        cause = failure_cause(err)
        if isinstance(cause, ApplicationError) and cause.type == PAYMENT_DECLINED:
            code = cause.details[0] if cause.details else None
            return self._outcome(
                "declined",
                error_type=PAYMENT_DECLINED,
                decline_code=code,
                reason=f"the first payment was declined ({code or 'no decline code'})",
            )
        if isinstance(cause, ApplicationError) and cause.type in (SLUG_TAKEN, EMAIL_TAKEN):
            return self._outcome("rejected", error_type=cause.type, reason=cause.message)
        return self._outcome("failed", error_type=SIGNUP_FAILED, reason=self.saga.state.error)

    def _final_error(self, err: BaseException) -> BaseException:
        if isinstance(err, asyncio.CancelledError):
            return err  # the workflow ends cancelled
        outcome = self.outcome
        assert outcome is not None, "_unwind decides the outcome"
        if outcome.status == "declined":
            return ApplicationError(
                outcome.reason or "declined", outcome.decline_code, type=PAYMENT_DECLINED, non_retryable=True
            )
        if outcome.status == "rejected":
            return ApplicationError(outcome.reason or "rejected", type=outcome.error_type, non_retryable=True)
        return ApplicationError(
            f"the paid sign-up failed and was unwound: {outcome.reason}", type=SIGNUP_FAILED, non_retryable=True
        )

    # --- helpers ---

    def _wid(self) -> str:
        return workflow.info().workflow_id

    def _outcome(self, status: str, **fields) -> SignupOutcome:
        p = self.params
        return SignupOutcome(
            status=status,
            workflow_id=self._wid(),
            user_id=p.user_id,
            tenant_id=p.tenant_id,
            subscription_id=p.subscription_id,
            **fields,
        )

    # --- handlers ---

    @workflow.signal(name=SIGNAL_REGISTRATION_PROGRESS)
    def registration_progress(self, progress: RegistrationProgress) -> None:
        if self.progress is None:
            self.progress = progress

    @workflow.signal(name=SIGNAL_BILLING_CYCLE_STATUS)
    def billing_cycle_status(self, status: CycleStatusChanged) -> None:
        # The first payment's cycle reports paid/unpaid here too; its result is what counts. Kept for operators.
        self.cycle_statuses = [*self.cycle_statuses, status][-5:]

    @workflow.update(name=UPDATE_SIGNUP_OUTCOME)
    async def outcome_update(self) -> SignupOutcome:
        """Answers once the saga is decided: paid and the subscription started, or unwound, or rejected."""
        await workflow.wait_condition(lambda: self.outcome is not None)
        assert self.outcome is not None, "what the wait was for"
        return self.outcome

    @workflow.query(name=QUERY_SIGNUP_OUTCOME)
    def signup_outcome(self) -> SignupOutcome:
        return self.outcome or self._outcome("pending")

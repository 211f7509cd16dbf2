"""Registration saga: pending user → verification token → verification email → wait → activate.

The password reaches this workflow only as an argon2 hash; the verification token never does (only its id).
Started by a paid sign-up, it holds the verification email until the parent's `send_verification_email`
signal (the sign-up's first payment succeeded), so a declined sign-up emails no one.
Expiry or cancellation compensates: revoke the token, delete the pending user (which releases the email).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        ActivateUser,
        CreatePendingUser,
        EmailRequest,
        IssueVerificationToken,
        RegistrationAccepted,
        RegistrationInput,
        RegistrationResult,
        TokenRef,
        UserRef,
        VerifyEmail,
    )
    from models.errors import EMAIL_TAKEN, REGISTRATION_FAILED, error_type
    from models.names import (
        REGISTRATION_WORKFLOW,
        SIGNAL_REGISTRATION_PROGRESS,
        SIGNAL_SEND_VERIFICATION_EMAIL,
        SIGNAL_VERIFY_EMAIL,
        UPDATE_REGISTRATION_ACCEPTED,
        email_message_id,
    )
    from models.signup_contracts import RegistrationProgress
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga, wait_until


@workflow.defn(name=REGISTRATION_WORKFLOW)
class RegistrationWorkflow:
    @workflow.init
    def __init__(self, params: RegistrationInput) -> None:
        self.saga = Saga("registration", params.retry_policies)
        self.params = params
        self.user_created = False
        self.rejection: ApplicationError | None = None
        self.token_id: uuid.UUID | None = None
        self.verified_token: uuid.UUID | None = None
        self.email_released = False

    @workflow.run
    async def run(self, params: RegistrationInput) -> RegistrationResult:
        wid = workflow.info().workflow_id
        create = CreatePendingUser(
            user_id=params.user_id,
            email=params.email,
            display_name=params.display_name,
            password_hash=params.password_hash,
            workflow_id=wid,
        )
        try:
            await self.saga.step(
                "create_pending_user",
                act.CREATE_PENDING_USER,
                create,
                compensation=(act.DELETE_PENDING_USER, UserRef(user_id=params.user_id, workflow_id=wid)),
                local=True,  # idempotent by user id: a re-run finds its row
            )
        except ActivityError as err:
            if error_type(err) == EMAIL_TAKEN:
                # Nothing was created, so nothing to compensate: answer the caller and end.
                self.rejection = ApplicationError(
                    "this email is already registered", type=EMAIL_TAKEN, non_retryable=True
                )
                await self._tell_parent("rejected", EMAIL_TAKEN)
                await self.saga.reject(self.rejection, "email already registered; nothing created")
            # Any other failure: the usual unwind (the create may have happened before the error).
            self.rejection = ApplicationError(
                "the registration could not be started", type=REGISTRATION_FAILED, non_retryable=True
            )
            await self.saga.abort(err)
        self.user_created = True
        return await self.saga.run(self._after_user_created)

    async def _after_user_created(self) -> RegistrationResult:
        params = self.params
        # Inside the saga body: a cancellation while the parent is told still unwinds the pending user.
        await self._tell_parent("user_created")
        window = timedelta(seconds=params.verification_timeout_seconds)
        token_id = workflow.uuid4()
        self.token_id = token_id
        expires_at = workflow.now() + window
        await self.saga.step(
            "issue_verification_token",
            act.ISSUE_VERIFICATION_TOKEN,
            IssueVerificationToken(user_id=params.user_id, token_id=token_id, expires_at=expires_at),
            compensation=(act.REVOKE_VERIFICATION_TOKEN, TokenRef(token_id=token_id)),
            local=True,  # idempotent by token id
        )
        if params.hold_verification_email:
            # The hold counts against the token's lifetime: the user gets what is left of it.
            self.saga.set_status(
                "waiting",
                step="await_parent_pivot",
                waiting_for=(
                    f"the parent's '{SIGNAL_SEND_VERIFICATION_EMAIL}' signal (its first payment) before the "
                    f"verification email, until {expires_at.isoformat(timespec='seconds')}"
                ),
            )
            if not await self._wait(lambda: self.email_released, expires_at - workflow.now()):
                return await self._expire()
            window = expires_at - workflow.now()
        wid = workflow.info().workflow_id
        await hand_off_email(
            self.saga,
            "send_verification_email",
            EmailRequest(
                message_id=email_message_id(wid, "verify"),
                template="verify_email",
                to_user_id=params.user_id,
                params={"token_id": str(token_id)},
            ),
        )

        deadline = workflow.now() + window
        self.saga.set_status(
            "waiting",
            step="await_verification",
            waiting_for=f"email verification until {deadline.isoformat(timespec='seconds')}",
        )
        if not await self._wait(lambda: self.verified_token == token_id, window):
            return await self._expire()

        await self.saga.step(
            "activate_user",
            act.ACTIVATE_USER,
            ActivateUser(user_id=params.user_id, token_id=token_id, workflow_id=workflow.info().workflow_id),
        )
        self.saga.pivot("activate_user")
        self.saga.complete("user verified and active")
        return RegistrationResult(user_id=params.user_id, status="verified")

    async def _wait(self, condition: Callable[[], bool], timeout: timedelta) -> bool:
        """Wait for `condition` at most `timeout`; False once the time is up (a dropped cancel is raised)."""
        return await wait_until(condition, timeout)

    async def _expire(self) -> RegistrationResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self.saga.compensate("expired")
        return RegistrationResult(user_id=self.params.user_id, status="expired")

    async def _tell_parent(self, status: str, error_type: str | None = None) -> None:
        """A registration started by a paid sign-up tells its parent as soon as the pending user exists (the
        tenant's membership references it) or the email was refused; it completes only after verification."""
        parent = workflow.info().parent
        if parent is None:
            return
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(
                SIGNAL_REGISTRATION_PROGRESS,
                RegistrationProgress(user_id=self.params.user_id, status=status, error_type=error_type),
            )
        except Exception:
            workflow.logger.warning("parent %s did not take the %s signal", parent.workflow_id, status)

    @workflow.update(name=UPDATE_REGISTRATION_ACCEPTED)
    async def accepted(self) -> RegistrationAccepted:
        """Answers once the pending user exists, so a taken email is a synchronous 409 for the API."""
        await workflow.wait_condition(lambda: self.user_created or self.rejection is not None)
        if self.rejection is not None:
            raise self.rejection
        return RegistrationAccepted(user_id=self.params.user_id, status=self.saga.state.status)

    @workflow.signal(name=SIGNAL_VERIFY_EMAIL)
    def verify_email(self, signal: VerifyEmail) -> None:
        # A token for another registration (or an old one) is ignored: the API checked it exists.
        self.verified_token = signal.token_id

    @workflow.signal(name=SIGNAL_SEND_VERIFICATION_EMAIL)
    def send_verification_email(self) -> None:
        """A held verification email may go: the parent passed its pivot (only waited for when held)."""
        self.email_released = True

"""Email change saga: reserve the new address → verification token → verification email to the new address →
wait for verification → swap (the pivot) → notice to the old address.

The new address reaches this workflow in its input (like a registration's); the token never does (only its id).
Expiry or cancellation before the swap compensates in reverse: revoke the token, release the reservation.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        EmailChangeAccepted,
        EmailChangeInput,
        EmailChangeResult,
        EmailChangeToken,
        EmailRequest,
        ReleaseEmailChange,
        ReserveEmailChange,
        SwapEmail,
        TokenRef,
        VerifyEmail,
    )
    from models.errors import EMAIL_CHANGE_FAILED, EMAIL_TAKEN, error_type
    from models.names import (
        EMAIL_CHANGE_WORKFLOW,
        SIGNAL_VERIFY_EMAIL,
        UPDATE_EMAIL_CHANGE_ACCEPTED,
        email_message_id,
    )
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga


@workflow.defn(name=EMAIL_CHANGE_WORKFLOW)
class EmailChangeWorkflow:
    @workflow.init
    def __init__(self, params: EmailChangeInput) -> None:
        self.saga = Saga("email_change", params.retry_policies)
        self.params = params
        self.reserved = False
        self.rejection: ApplicationError | None = None
        self.verified_token: uuid.UUID | None = None
        self.release_reason = "cancelled"

    @workflow.run
    async def run(self, params: EmailChangeInput) -> EmailChangeResult:
        wid = workflow.info().workflow_id
        token_id = workflow.uuid4()
        release = ReleaseEmailChange(
            change_id=params.change_id, user_id=params.user_id, reason="cancelled", workflow_id=wid
        )
        try:
            await self.saga.step(
                "reserve_new_email",
                act.RESERVE_EMAIL_CHANGE,
                ReserveEmailChange(
                    change_id=params.change_id,
                    user_id=params.user_id,
                    new_email=params.new_email,
                    token_id=token_id,
                    workflow_id=wid,
                ),
                compensation=(
                    act.RELEASE_EMAIL_CHANGE,
                    lambda: release.model_copy(update={"reason": self.release_reason}),
                ),
            )
        except ActivityError as err:
            if error_type(err) == EMAIL_TAKEN:
                self.rejection = ApplicationError(
                    "this email is already registered", type=EMAIL_TAKEN, non_retryable=True
                )
                await self.saga.reject(self.rejection, "new address in use; nothing reserved")
            self.rejection = ApplicationError(
                "the email change could not be started", type=EMAIL_CHANGE_FAILED, non_retryable=True
            )
            await self.saga.abort(err)
        self.reserved = True
        return await self.saga.run(lambda: self._after_reservation(token_id))

    async def _after_reservation(self, token_id: uuid.UUID) -> EmailChangeResult:
        params = self.params
        wid = workflow.info().workflow_id
        window = timedelta(seconds=params.verification_timeout_seconds)
        deadline = workflow.now() + window
        await self.saga.step(
            "issue_verification_token",
            act.ISSUE_EMAIL_CHANGE_TOKEN,
            EmailChangeToken(
                change_id=params.change_id, user_id=params.user_id, token_id=token_id, expires_at=deadline
            ),
            compensation=(act.REVOKE_VERIFICATION_TOKEN, TokenRef(token_id=token_id)),
        )
        await hand_off_email(
            self.saga,
            "send_verification_email",
            EmailRequest(
                message_id=email_message_id(wid, "verify-new-email"),
                template="verify_new_email",
                to_user_id=params.user_id,
                params={"change_id": str(params.change_id), "token_id": str(token_id)},
            ),
        )
        self.saga.set_status(
            "waiting",
            step="await_verification",
            waiting_for=f"verification of the new address until {deadline.isoformat(timespec='seconds')}",
        )
        try:
            await workflow.wait_condition(lambda: self.verified_token == token_id, timeout=window)
        except TimeoutError:
            self.release_reason = "expired"
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self.saga.compensate("expired")
            return EmailChangeResult(change_id=params.change_id, status="expired")

        await self.saga.step(
            "swap_email",
            act.SWAP_EMAIL,
            SwapEmail(change_id=params.change_id, user_id=params.user_id, token_id=token_id, workflow_id=wid),
        )
        self.saga.pivot("swap_email")
        await self.saga.forward(lambda: self._notify_old_address(wid))
        self.saga.complete("email address changed")
        return EmailChangeResult(change_id=params.change_id, status="changed")

    async def _notify_old_address(self, wid: str) -> None:
        await hand_off_email(
            self.saga,
            "notify_old_address",
            EmailRequest(
                message_id=email_message_id(wid, "email-changed"),
                template="email_changed",
                to_user_id=self.params.user_id,
                params={"change_id": str(self.params.change_id)},
            ),
        )

    @workflow.update(name=UPDATE_EMAIL_CHANGE_ACCEPTED)
    async def accepted(self) -> EmailChangeAccepted:
        """Answers once the new address is reserved, so a taken address is a synchronous 409 for the API."""
        await workflow.wait_condition(lambda: self.reserved or self.rejection is not None)
        if self.rejection is not None:
            raise self.rejection
        return EmailChangeAccepted(change_id=self.params.change_id, status=self.saga.state.status)

    @workflow.signal(name=SIGNAL_VERIFY_EMAIL)
    def verify_email(self, signal: VerifyEmail) -> None:
        # Another token (an old one) is ignored: the API checked it exists.
        self.verified_token = signal.token_id

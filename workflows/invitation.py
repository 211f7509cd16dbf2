"""Invitation saga: invitation row + token → invitation email → wait for acceptance (default 7 days) →
membership. A revoke signal (an admin, or a newer invitation to the same email) or the deadline closes it;
cancellation revokes the token.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models import activity_names as act
    from models.contracts import (
        AcceptInvitation,
        CloseInvitation,
        CompleteInvitation,
        EmailRequest,
        InvitationInput,
        InvitationResult,
        IssueInvitation,
    )
    from models.names import (
        INVITATION_WORKFLOW,
        SIGNAL_ACCEPT_INVITATION,
        SIGNAL_REVOKE_INVITATION,
        email_message_id,
    )
    from workflows.email_handoff import hand_off_email
    from workflows.saga import Saga


@workflow.defn(name=INVITATION_WORKFLOW)
class InvitationWorkflow:
    def __init__(self) -> None:
        self.saga = Saga("invitation")
        self.accepted_by: AcceptInvitation | None = None
        self.revoked = False

    @workflow.run
    async def run(self, params: InvitationInput) -> InvitationResult:
        self.saga.retry_policies = params.retry_policies
        return await self.saga.run(lambda: self._invite(params))

    async def _invite(self, p: InvitationInput) -> InvitationResult:
        wid = workflow.info().workflow_id
        timeout = timedelta(seconds=p.expires_in_seconds)
        expires_at = workflow.now() + timeout
        await self.saga.step(
            "issue_invitation",
            act.ISSUE_INVITATION,
            IssueInvitation(
                invitation_id=p.invitation_id,
                tenant_id=p.tenant_id,
                email=p.email,
                role=p.role,
                invited_by=p.invited_by,
                expires_at=expires_at,
            ),
            compensation=(
                act.CLOSE_INVITATION,
                CloseInvitation(invitation_id=p.invitation_id, tenant_id=p.tenant_id, status="revoked"),
            ),
        )
        if not self.revoked:
            await hand_off_email(
                self.saga,
                "send_invitation_email",
                EmailRequest(
                    message_id=email_message_id(wid, "invite"),
                    template="invitation",
                    tenant_id=p.tenant_id,
                    params={"invitation_id": str(p.invitation_id)},
                ),
            )
            self.saga.set_status(
                "waiting",
                step="await_acceptance",
                waiting_for=f"acceptance until {expires_at.isoformat(timespec='seconds')}",
            )
            try:
                await workflow.wait_condition(lambda: self.accepted_by is not None or self.revoked, timeout=timeout)
            except TimeoutError:
                return await self._close(p, "expired")
        if self.accepted_by is None:
            return await self._close(p, "revoked")

        user_id = self.accepted_by.user_id
        await self.saga.step(
            "add_membership",
            act.COMPLETE_INVITATION,
            CompleteInvitation(invitation_id=p.invitation_id, tenant_id=p.tenant_id, user_id=user_id, workflow_id=wid),
        )
        self.saga.complete("invitation accepted")
        return InvitationResult(invitation_id=p.invitation_id, status="accepted", user_id=user_id)

    async def _close(self, p: InvitationInput, status: str) -> InvitationResult:
        await self.saga.step(
            "close_invitation",
            act.CLOSE_INVITATION,
            CloseInvitation(invitation_id=p.invitation_id, tenant_id=p.tenant_id, status=status),
        )
        self.saga.complete(f"invitation {status}")
        return InvitationResult(invitation_id=p.invitation_id, status=status)

    @workflow.signal(name=SIGNAL_ACCEPT_INVITATION)
    def accept(self, signal: AcceptInvitation) -> None:
        if self.accepted_by is None and not self.revoked:
            self.accepted_by = signal

    @workflow.signal(name=SIGNAL_REVOKE_INVITATION)
    def revoke(self) -> None:
        if self.accepted_by is None:
            self.revoked = True

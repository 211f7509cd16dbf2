"""Stand-ins for the registration activities, registered under the real activity names.

`FakeUsers` records every call in order and can be told to fail a step (permanently) or a
compensation (until `healed`), so a test can drive the saga down each path. The verification email's hand-off
(`email.start_delivery`) is the real activity: it starts whatever `EmailDelivery` the test's email worker runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email_handoff import EmailHandoff
from models import activity_names as act
from models.contracts import (
    ActivateUser,
    CreatePendingUser,
    EmailChangeToken,
    IssueVerificationToken,
    ReleaseEmailChange,
    ReserveEmailChange,
    SwapEmail,
    TokenRef,
    UserRef,
)


@dataclass
class FakeUsers:
    fail_step: str | None = None  # activity name that fails permanently
    fail_with_type: str = "Boom"
    broken_compensation: str | None = None  # compensation that fails until healed
    healed: bool = False
    calls: list[str] = field(default_factory=list)
    token_ids: list = field(default_factory=list)

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_step:
            raise ApplicationError(f"{name} failed on purpose", type=self.fail_with_type, non_retryable=True)
        if name == self.broken_compensation and not self.healed:
            raise ApplicationError(f"{name} is broken", type="CompensationBroken", non_retryable=True)

    def activities(self) -> list:
        @activity.defn(name=act.CREATE_PENDING_USER)
        async def create_pending_user(req: CreatePendingUser) -> None:
            self._maybe_fail(act.CREATE_PENDING_USER)

        @activity.defn(name=act.DELETE_PENDING_USER)
        async def delete_pending_user(req: UserRef) -> None:
            self._maybe_fail(act.DELETE_PENDING_USER)

        @activity.defn(name=act.ISSUE_VERIFICATION_TOKEN)
        async def issue_verification_token(req: IssueVerificationToken) -> None:
            self.token_ids.append(req.token_id)
            self._maybe_fail(act.ISSUE_VERIFICATION_TOKEN)

        @activity.defn(name=act.REVOKE_VERIFICATION_TOKEN)
        async def revoke_verification_token(req: TokenRef) -> None:
            self._maybe_fail(act.REVOKE_VERIFICATION_TOKEN)

        @activity.defn(name=act.ACTIVATE_USER)
        async def activate_user(req: ActivateUser) -> None:
            self._maybe_fail(act.ACTIVATE_USER)

        return [
            create_pending_user,
            delete_pending_user,
            issue_verification_token,
            revoke_verification_token,
            activate_user,
            EmailHandoff().start_delivery,  # the real one: it starts the (fake) delivery through the worker's client
        ]


@dataclass
class FakeEmailChanges:
    """Stand-ins for the email-change activities (and the token revocation it shares with registration)."""

    fail_step: str | None = None
    fail_with_type: str = "Boom"
    calls: list[str] = field(default_factory=list)
    token_ids: list = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # the reasons the reservation was released with

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_step:
            raise ApplicationError(f"{name} failed on purpose", type=self.fail_with_type, non_retryable=True)

    def activities(self) -> list:
        @activity.defn(name=act.RESERVE_EMAIL_CHANGE)
        async def reserve(req: ReserveEmailChange) -> None:
            self.token_ids.append(req.token_id)
            self._maybe_fail(act.RESERVE_EMAIL_CHANGE)

        @activity.defn(name=act.ISSUE_EMAIL_CHANGE_TOKEN)
        async def issue_token(req: EmailChangeToken) -> None:
            self._maybe_fail(act.ISSUE_EMAIL_CHANGE_TOKEN)

        @activity.defn(name=act.RELEASE_EMAIL_CHANGE)
        async def release(req: ReleaseEmailChange) -> None:
            self.released.append(req.reason)
            self._maybe_fail(act.RELEASE_EMAIL_CHANGE)

        @activity.defn(name=act.SWAP_EMAIL)
        async def swap_email(req: SwapEmail) -> None:
            self._maybe_fail(act.SWAP_EMAIL)

        @activity.defn(name=act.REVOKE_VERIFICATION_TOKEN)
        async def revoke_verification_token(req: TokenRef) -> None:
            self._maybe_fail(act.REVOKE_VERIFICATION_TOKEN)

        return [reserve, issue_token, release, swap_email, revoke_verification_token, EmailHandoff().start_delivery]

"""Sign-up: start the registration saga, and verify the email address it sent a token to (a registration's,
or the new address of an email change: the token's purpose says which saga waits for it)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Response, status
from sqlmodel import col, select
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributePair
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import DbDep, RedisDep, SettingsDep, TemporalConnectorDep
from api.problems import (
    INVALID_TOKEN,
    TOKEN_ALREADY_USED,
    TOKEN_EXPIRED,
    Problem,
    problem_responses,
)
from api.saga_start import IdempotencyKey, SagaStart, request_fingerprint, request_key, start_saga
from api.schemas import (
    RegisterRequest,
    RegistrationAcceptedResponse,
    RegistrationLinks,
    VerifyRequest,
    VerifyResponse,
)
from models.contracts import (
    EmailChangeResult,
    RegistrationAccepted,
    RegistrationInput,
    RegistrationResult,
    VerifyEmail,
)
from models.db import transaction
from models.names import (
    REGISTRATION_WORKFLOW,
    SA_USER_ID,
    SIGNAL_VERIFY_EMAIL,
    UPDATE_REGISTRATION_ACCEPTED,
    email_change_workflow_id,
    registration_workflow_id,
)
from models.tables import EmailChange, VerificationToken
from prognet import passwords, tokens

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/auth", tags=["auth"], dependencies=[Depends(require_json_body)])

VERIFY_RESULT_TIMEOUT_SECONDS = 15.0


def _accepted(user_id: uuid.UUID, workflow_id: str, state: str) -> RegistrationAcceptedResponse:
    return RegistrationAcceptedResponse(
        user_id=user_id,
        workflow_id=workflow_id,
        status=state,
        links=RegistrationLinks(self=f"/v1/workflows/{workflow_id}", verify="/v1/auth/verify"),
    )


@router.post(
    "/register",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RegistrationAcceptedResponse,
    summary="Register a new account",
    description="Starts the registration saga: a pending user is created and a verification email sent. "
    "Answers once the pending user exists; a taken email answers 409. Not confirmed within 15 s: 503 naming "
    "`user_id` and `workflow_id`; repeating the same request (even without an Idempotency-Key) finds it.",
    responses=problem_responses(400, 409, 413, 415, 422, 503),
)
async def register(
    response: Response,
    body: RegisterRequest,
    settings: SettingsDep,
    redis: RedisDep,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> RegistrationAcceptedResponse:
    client = await temporal.get()
    fingerprint = request_fingerprint(body.email.strip().lower(), body.display_name or "")
    key = await request_key(
        redis, settings, idempotency_key, "register", fingerprint=fingerprint, secret=body.password.get_secret_value()
    )
    user_id = key.id()
    workflow_id = registration_workflow_id(user_id)
    password_hash = await passwords.hash_password(settings, body.password.get_secret_value())

    reply = await start_saga(
        client,
        SagaStart(
            workflow=REGISTRATION_WORKFLOW,
            workflow_id=workflow_id,
            input=RegistrationInput(
                user_id=user_id,
                email=body.email,
                display_name=body.display_name,
                password_hash=password_hash,
                verification_timeout_seconds=int(settings.registration_verification_timeout.total_seconds()),
            ),
            fingerprint=fingerprint,
            reused_detail="This Idempotency-Key was already used for a different registration request.",
            search_attributes=[SearchAttributePair(SA_USER_ID, str(user_id))],
            summary=f"Registration of user {user_id}",
            ids={"user_id": str(user_id)},
            location=f"/v1/workflows/{workflow_id}",
        ),
        key,
        update=UPDATE_REGISTRATION_ACCEPTED,
        result_type=RegistrationAccepted,
        response=response,
    )
    reply.raise_if_refused()  # a taken email: 409
    if reply.answer is None:  # the same Idempotency-Key as a registration that already ended
        log.info("registration replayed", extra={"workflow_id": workflow_id})
        return _accepted(user_id, workflow_id, reply.closed or "unknown")
    log.info("registration accepted", extra={"workflow_id": workflow_id, "user_id": str(reply.answer.user_id)})
    return _accepted(reply.answer.user_id, workflow_id, reply.answer.status)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    summary="Verify an email address with the emailed token",
    description="A registration's token: 200 once the account is active. An email change's token: 200 once the "
    "account has the new address. 202 (`verifying`) if the saga has not finished within 15 s.",
    responses={
        **problem_responses(400, 409, 410, 413, 415, 422, 503),
        202: {"model": VerifyResponse, "description": "Verification accepted, still in progress."},
    },
)
async def verify(
    body: VerifyRequest, engine: DbDep, temporal: TemporalConnectorDep, response: Response
) -> VerifyResponse:
    async with transaction(engine) as db:
        token = (
            await db.exec(
                select(VerificationToken).where(
                    VerificationToken.token_hash == tokens.hash_token(body.token),
                    col(VerificationToken.purpose).in_([tokens.VERIFY_EMAIL, tokens.CHANGE_EMAIL]),
                )
            )
        ).first()
        change = (
            (await db.exec(select(EmailChange).where(EmailChange.token_id == token.id))).first()
            if token is not None and token.purpose == tokens.CHANGE_EMAIL
            else None
        )
    if token is None:
        raise Problem(INVALID_TOKEN, "This verification token is not valid.")
    if token.used_at is not None:
        raise Problem(TOKEN_ALREADY_USED, "This verification token was already used; log in instead.")
    if token.revoked_at is not None or token.expires_at <= datetime.now(UTC):
        raise Problem(TOKEN_EXPIRED, "This verification token has expired; start again.")

    client = await temporal.get()
    if token.purpose == tokens.CHANGE_EMAIL:
        if change is None or change.status != "pending":
            raise Problem(TOKEN_EXPIRED, "This email change has ended; start again.")
        handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(
            email_change_workflow_id(change.id), result_type=EmailChangeResult
        )
    else:
        handle = client.get_workflow_handle(registration_workflow_id(token.user_id), result_type=RegistrationResult)
    try:
        await handle.signal(SIGNAL_VERIFY_EMAIL, VerifyEmail(token_id=token.id))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # the saga already ended (expired or compensated)
            raise Problem(TOKEN_EXPIRED, "This verification has ended; start again.") from None
        raise
    try:
        result = await asyncio.wait_for(handle.result(), VERIFY_RESULT_TIMEOUT_SECONDS)
    except TimeoutError:
        response.status_code = status.HTTP_202_ACCEPTED
        return VerifyResponse(user_id=token.user_id, status="verifying")
    except WorkflowFailureError:
        raise Problem(TOKEN_EXPIRED, "This verification has ended; start again.") from None
    if result.status not in ("verified", "changed"):
        raise Problem(TOKEN_EXPIRED, "This verification has expired; start again.")
    log.info("email verified", extra={"user_id": str(token.user_id), "purpose": token.purpose})
    return VerifyResponse(user_id=token.user_id, status="verified")

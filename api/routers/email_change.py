"""Changing the caller's email address: starts the email-change saga (verification of the new address is
`POST /v1/auth/verify` with the emailed token, like a registration's)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response, status
from temporalio.common import SearchAttributePair

from api.body_guard import require_json_body
from api.current_password import prove_current_password
from api.deps import ClientAddress, CurrentUser, DbDep, RedisDep, SettingsDep, TemporalConnectorDep, ThrottleDep
from api.problems import problem_responses
from api.saga_start import IdempotencyKey, SagaStart, request_fingerprint, request_key, start_saga
from api.schemas import EmailChangeAcceptedResponse, EmailChangeLinks, EmailChangeRequest
from models.contracts import EmailChangeAccepted, EmailChangeInput
from models.names import EMAIL_CHANGE_WORKFLOW, SA_USER_ID, UPDATE_EMAIL_CHANGE_ACCEPTED, email_change_workflow_id

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/me", tags=["me"], dependencies=[Depends(require_json_body)])


@router.post(
    "/email",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EmailChangeAcceptedResponse,
    summary="Change your email address",
    description="Needs the current password (a wrong one is 403 and counts like a failed login). Starts the "
    "email-change saga: the new address is reserved (taken by another account: 409) and a verification email "
    "sent to it; `POST /v1/auth/verify` with its token swaps the address and notifies the old one. Not verified "
    "within `EMAIL_CHANGE_VERIFICATION_TIMEOUT`: the change expires. A newer change supersedes a pending one. "
    "`Location` is the saga's progress.",
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
)
async def change_email(
    body: EmailChangeRequest,
    response: Response,
    caller: CurrentUser,
    engine: DbDep,
    settings: SettingsDep,
    redis: RedisDep,
    throttle: ThrottleDep,
    address: ClientAddress,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> EmailChangeAcceptedResponse:
    password = body.current_password.get_secret_value()
    await prove_current_password(settings, engine, throttle, address, caller, password)
    client = await temporal.get()
    fingerprint = request_fingerprint(str(body.new_email).strip().lower())
    key = await request_key(
        redis, settings, idempotency_key, "email-change", caller.user_id, fingerprint=fingerprint, secret=password
    )
    change_id = key.id()
    workflow_id = email_change_workflow_id(change_id)
    location = f"/v1/workflows/{workflow_id}"
    reply = await start_saga(
        client,
        SagaStart(
            workflow=EMAIL_CHANGE_WORKFLOW,
            workflow_id=workflow_id,
            input=EmailChangeInput(
                change_id=change_id,
                user_id=caller.user_id,
                new_email=str(body.new_email),
                verification_timeout_seconds=int(settings.email_change_verification_timeout.total_seconds()),
            ),
            fingerprint=fingerprint,
            reused_detail="This Idempotency-Key was already used for a different email change.",
            search_attributes=[SearchAttributePair(SA_USER_ID, str(caller.user_id))],
            summary=f"Email change {change_id} of user {caller.user_id}",
            ids={"change_id": str(change_id)},
            location=location,
        ),
        key,
        update=UPDATE_EMAIL_CHANGE_ACCEPTED,
        result_type=EmailChangeAccepted,
        response=response,
    )
    reply.raise_if_refused()  # the address is taken or reserved: 409
    state = reply.answer.status if reply.answer is not None else (reply.closed or "unknown")
    log.info("email change accepted", extra={"workflow_id": workflow_id, "user_id": str(caller.user_id)})
    return EmailChangeAcceptedResponse(
        change_id=change_id,
        workflow_id=workflow_id,
        status=state,
        links=EmailChangeLinks(self=location, verify="/v1/auth/verify"),
    )

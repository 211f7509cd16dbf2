"""Paid sign-up: one request creates the account, its organisation and the first payment, or nothing at all.

`POST /v1/signup` hashes the password (argon2id, off the event loop) before anything starts, resolves the plan
from the catalogue, then starts `signup-{user_id}` (workflows/paid_signup.py) with update-with-start and waits
for its `outcome` update, which answers once the saga is decided: paid and the subscription started (201), or
everything unwound (402 on a declined card, 409 on a taken email or slug). Not decided within 15 s → 503 with
`Retry-After`; the same Idempotency-Key (or `GET /v1/signup/{workflow_id}`) then tells the outcome.

The status is the signing-up caller's only: `GET /v1/signup/{workflow_id}` wants the `status_token` every
answer naming the sign-up carries (an HMAC of the workflow id), or, once they can log in, the new user's
bearer token. Anyone else gets the 404 of an unknown id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import SearchAttributePair
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import AccessTokensDep, RedisDep, SessionsDep, SettingsDep, TemporalConnectorDep
from api.jwt_tokens import InvalidAccessToken
from api.problems import NOT_FOUND, WORKFLOW_ENGINE_UNAVAILABLE, Problem, problem_responses, refusal
from api.routers.plans import resolve_plan
from api.saga_start import IdempotencyKey, SagaStart, request_fingerprint, request_key, start_saga
from api.schemas import SignupLinks, SignupRequest, SignupResponse, SignupStatusView
from models import errors
from models.names import (
    PAID_SIGNUP_WORKFLOW,
    QUERY_SIGNUP_OUTCOME,
    SA_TENANT_ID,
    SA_USER_ID,
    UPDATE_SIGNUP_OUTCOME,
    signup_workflow_id,
)
from models.signup_contracts import PaidSignupInput, SignupOutcome
from prognet import passwords
from prognet.settings import Settings

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/signup", tags=["auth"], dependencies=[Depends(require_json_body)])

QUERY_TIMEOUT = timedelta(seconds=3)
# where a sign-up's refusal says more than the catalogue's wording
DETAILS = {errors.SLUG_TAKEN: "Another tenant already uses this slug; choose another. Nothing was created."}

SignupWorkflowId = Annotated[
    str,
    Path(
        pattern=r"^signup-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="The `workflow_id` a sign-up answered with.",
    ),
]

StatusTokenQuery = Annotated[
    str | None,
    Query(
        alias="status_token",
        max_length=128,
        description="The `status_token` the sign-up answered with (or send it as a header).",
    ),
]
StatusTokenHeader = Annotated[
    str | None, Header(alias="Signup-Status-Token", max_length=128, description="The sign-up's `status_token`.")
]
_bearer = HTTPBearer(auto_error=False, description="Access token from `POST /v1/auth/login`.")
UNKNOWN = "No sign-up with this id."


def status_token(settings: Settings, workflow_id: str) -> str:
    """What proves the caller is the one who signed up: only the API can make it, only that answer carried it."""
    return hmac.new(settings.derived_key("signup-status"), workflow_id.encode(), hashlib.sha256).hexdigest()


async def _is_the_signing_up_user(
    credentials: HTTPAuthorizationCredentials | None,
    workflow_id: str,
    tokens: AccessTokensDep,
    sessions: SessionsDep,
) -> bool:
    if credentials is None:
        return False
    try:
        claims = tokens.decode(credentials.credentials)
    except InvalidAccessToken:
        return False
    user_id = uuid.UUID(workflow_id.removeprefix("signup-"))
    return claims.user_id == user_id and await sessions.user_of(claims.session_id) == user_id


def _links(outcome: SignupOutcome) -> SignupLinks:
    wid, tenant = outcome.workflow_id, outcome.tenant_id
    return SignupLinks(
        self=f"/v1/signup/{wid}",
        workflow=f"/v1/workflows/{wid}",
        verify="/v1/auth/verify",
        tenant=f"/v1/tenants/{tenant}",
        subscription=f"/v1/tenants/{tenant}/subscriptions/{outcome.subscription_id}",
    )


def _outcome_of_failure(exc: WorkflowFailureError, base: SignupOutcome) -> SignupOutcome:
    """The outcome of a sign-up saga that already ended in failure (its error type says why)."""
    cause = errors.failure_cause(exc)
    if not isinstance(cause, ApplicationError):
        return base.model_copy(
            update={"status": "failed", "error_type": errors.SIGNUP_FAILED, "reason": "cancelled or terminated"}
        )
    if cause.type == errors.PAYMENT_DECLINED:
        code = cause.details[0] if cause.details else None
        return base.model_copy(
            update={"status": "declined", "error_type": cause.type, "decline_code": code, "reason": cause.message}
        )
    if cause.type in (errors.EMAIL_TAKEN, errors.SLUG_TAKEN):
        return base.model_copy(update={"status": "rejected", "error_type": cause.type, "reason": cause.message})
    return base.model_copy(
        update={"status": "failed", "error_type": cause.type or errors.SIGNUP_FAILED, "reason": cause.message}
    )


async def _ended_outcome(client: Client, base: SignupOutcome) -> SignupOutcome:
    """A sign-up under this id already ended: its result (success) or its failure says how."""
    try:
        return await client.get_workflow_handle(base.workflow_id, result_type=SignupOutcome).result()
    except WorkflowFailureError as exc:
        return _outcome_of_failure(exc, base)


def _answer(outcome: SignupOutcome, token: str) -> SignupResponse:
    """201 for an active sign-up; every other outcome is a problem (nothing is left behind)."""
    if outcome.status == "active":
        return SignupResponse(
            status="active",
            subscription_status=outcome.subscription_status,
            user_id=outcome.user_id,
            tenant_id=outcome.tenant_id,
            subscription_id=outcome.subscription_id,
            workflow_id=outcome.workflow_id,
            status_token=token,
            links=_links(outcome),
        )
    declined = outcome.status == "declined"
    kind = errors.PAYMENT_DECLINED if declined else outcome.error_type if outcome.status == "rejected" else None
    extensions = {"decline_code": outcome.decline_code} if declined else {}
    detail = DETAILS.get(kind) if kind is not None else None
    ids = {"workflow_id": outcome.workflow_id, "status_token": token}
    problem = refusal(kind, detail=detail, **extensions, **ids) or refusal(
        errors.SIGNUP_FAILED, **ids
    )  # failed: undone, retry later
    assert problem is not None, "SIGNUP_FAILED has its entry in api.problems.REFUSALS"
    raise problem


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SignupResponse,
    summary="Sign up: account, organisation and the first payment, all or nothing",
    description="One saga (`signup-{user_id}`) composing the registration, the tenant provisioning and the first "
    "payment as child workflows. 201 once paid (or, for a plan with a trial, once the trial started) "
    "and the subscription runs; the user must still verify their email address to log in. A declined "
    "card is a 402 (`decline_code` says why) and a taken email or slug a 409: in every such case "
    "nothing is left behind (no user, tenant, subscription or Stripe customer). Not decided within "
    "15 s: 503 with `Retry-After`; repeat the request with the same Idempotency-Key, or follow "
    "`GET /v1/signup/{workflow_id}`.",
    responses=problem_responses(400, 402, 409, 413, 415, 422, 503),
)
async def signup(
    response: Response,
    body: SignupRequest,
    settings: SettingsDep,
    redis: RedisDep,
    temporal: TemporalConnectorDep,
    idempotency_key: IdempotencyKey = None,
) -> SignupResponse:
    plan = resolve_plan(settings, body.plan)
    client = await temporal.get()
    fingerprint = request_fingerprint(
        body.email.strip().lower(), body.display_name or "", body.tenant_name, body.slug, body.plan, body.payment_method
    )  # never the password
    key = await request_key(
        redis, settings, idempotency_key, "signup", fingerprint=fingerprint, secret=body.password.get_secret_value()
    )
    user_id, tenant_id, subscription_id = (key.id(kind) for kind in ("user", "tenant", "subscription"))
    workflow_id = signup_workflow_id(user_id)
    password_hash = await passwords.hash_password(settings, body.password.get_secret_value())

    try:
        reply = await start_saga(
            client,
            SagaStart(
                workflow=PAID_SIGNUP_WORKFLOW,
                workflow_id=workflow_id,
                input=PaidSignupInput(
                    user_id=user_id,
                    tenant_id=tenant_id,
                    subscription_id=subscription_id,
                    email=body.email,
                    password_hash=password_hash,
                    display_name=body.display_name,
                    tenant_name=body.tenant_name,
                    slug=body.slug,
                    plan=plan,
                    payment_method=body.payment_method,
                    verification_timeout_seconds=int(settings.registration_verification_timeout.total_seconds()),
                    dunning_schedule_days=settings.billing_dunning_days,
                    subscription_poll_seconds=settings.billing_poll_seconds,
                ),
                fingerprint=fingerprint,
                reused_detail="This Idempotency-Key was already used for a different sign-up.",
                search_attributes=[
                    SearchAttributePair(SA_TENANT_ID, str(tenant_id)),
                    SearchAttributePair(SA_USER_ID, str(user_id)),
                ],
                summary=f"Paid sign-up: user {user_id}, tenant {tenant_id}, plan {plan.id}",
                ids={"user_id": str(user_id), "tenant_id": str(tenant_id), "subscription_id": str(subscription_id)},
                location=f"/v1/signup/{workflow_id}",
            ),
            key,
            update=UPDATE_SIGNUP_OUTCOME,
            result_type=SignupOutcome,
            response=response,
        )
    except Problem as exc:
        if exc.kind is not WORKFLOW_ENGINE_UNAVAILABLE:
            raise
        raise Problem(
            exc.kind,
            "The sign-up was accepted but not decided in time; repeat the same request (with the same "
            "Idempotency-Key, if you sent one), or follow links.self with the status_token, to see its outcome.",
            headers=exc.headers,
            **exc.extensions,
            status_token=status_token(settings, workflow_id),
        ) from None

    outcome = reply.answer
    if outcome is None:  # it had ended under this Idempotency-Key, or ended while the update was delivered
        outcome = await _ended_outcome(
            client,
            SignupOutcome(
                status="pending",
                workflow_id=workflow_id,
                user_id=user_id,
                tenant_id=tenant_id,
                subscription_id=subscription_id,
            ),
        )
    log.info(
        "signup decided",
        extra={
            "workflow_id": workflow_id,
            "tenant_id": str(tenant_id),
            "status": outcome.status,
            "error_type": outcome.error_type,
        },
    )
    return _answer(outcome, status_token(settings, workflow_id))


@router.get(
    "/{workflow_id}",
    response_model=SignupStatusView,
    summary="Where a sign-up stands",
    description="`pending` while the saga decides; then `active`, `declined` (with `decline_code`), `rejected` or "
    "`failed` — in the last three nothing was left behind. No personal data in the answer. Only for the one who "
    "signed up: send the `status_token` the sign-up answered with (query parameter or `Signup-Status-Token` "
    "header), or the new user's bearer token once they can log in; otherwise 404, as for an unknown id.",
    responses=problem_responses(404, 422, 503),
)
async def signup_status(
    workflow_id: SignupWorkflowId,
    temporal: TemporalConnectorDep,
    settings: SettingsDep,
    tokens: AccessTokensDep,
    sessions: SessionsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    status_token_param: StatusTokenQuery = None,
    status_token_header: StatusTokenHeader = None,
) -> SignupStatusView:
    given = status_token_param or status_token_header
    expected = status_token(settings, workflow_id)
    if not (given and hmac.compare_digest(given.encode(), expected.encode())) and not await _is_the_signing_up_user(
        credentials, workflow_id, tokens, sessions
    ):
        raise Problem(NOT_FOUND, UNKNOWN)
    client = await temporal.get()
    handle = client.get_workflow_handle(workflow_id)
    try:
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(NOT_FOUND, UNKNOWN) from None
        raise
    return SignupStatusView(**outcome.model_dump(include=set(SignupStatusView.model_fields)))

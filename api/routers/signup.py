"""Paid sign-up: one request creates the account, its organisation and the first payment, or nothing at all.

`POST /v1/signup` hashes the password (argon2id, off the event loop) before anything starts, resolves the plan
from the catalogue, then starts `signup-{user_id}` (workflows/paid_signup.py) with update-with-start and waits
for its `outcome` update, which answers once the saga is decided: paid and the subscription started (201), or
everything unwound (402 on a declined card, 409 on a taken email or slug). Not decided within 15 s → 503 with
`Retry-After`; the same Idempotency-Key (or `GET /v1/signup/{workflow_id}`) then tells the outcome.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, status
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.body_guard import require_json_body
from api.deps import SettingsDep, TemporalConnectorDep
from api.problems import (
    EMAIL_ALREADY_REGISTERED,
    IDEMPOTENCY_KEY_REUSED,
    NOT_FOUND,
    SLUG_TAKEN,
    WORKFLOW_ENGINE_UNAVAILABLE,
    Problem,
    ProblemType,
    problem_responses,
)
from api.routers.plans import resolve_plan
from api.schemas import SignupLinks, SignupRequest, SignupResponse, SignupStatusView
from api.temporal_client import answer_within
from models.signup_contracts import PaidSignupInput, SignupOutcome
from prognet import passwords
from workflows.names import (
    PAID_SIGNUP_WORKFLOW,
    QUERY_SIGNUP_OUTCOME,
    SA_TENANT_ID,
    SA_USER_ID,
    TASK_QUEUE,
    UPDATE_SIGNUP_OUTCOME,
    signup_workflow_id,
)

log = logging.getLogger("prognet.api")

router = APIRouter(prefix="/v1/signup", tags=["auth"], dependencies=[Depends(require_json_body)])

PAYMENT_DECLINED = ProblemType("payment-declined", 402, "Payment declined")
SIGNUP_FAILED = ProblemType("signup-failed", 503, "Sign-up could not be completed")

# ids = uuid5(IDEMPOTENCY_NAMESPACE, "signup:{kind}:{Idempotency-Key}"): a retried request finds the same saga.
IDEMPOTENCY_NAMESPACE = uuid.UUID("8e2b7c4a-1d3f-5a6b-9c0e-4f7a2b1d3c5e")
QUERY_TIMEOUT = timedelta(seconds=3)
EMAIL_TAKEN_ERROR = "EmailAlreadyRegistered"
SLUG_TAKEN_ERROR = "SlugTaken"
PAYMENT_DECLINED_ERROR = "PaymentDeclined"

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,255}$",
    description="Retry-safe key: the same key with the same body returns the same sign-up (and never charges "
                "twice).",
)]
SignupWorkflowId = Annotated[str, Path(pattern=r"^signup-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                                       description="The `workflow_id` a sign-up answered with.")]


def request_fingerprint(body: SignupRequest) -> str:
    """Of the normalised request, without the password (a retry re-sends it; its hash is salted anyway)."""
    fields = [body.email.strip().lower(), body.display_name or "", body.tenant_name, body.slug, body.plan,
              body.payment_method]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def _ids(idempotency_key: str | None) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    if not idempotency_key:
        return uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return tuple(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"signup:{kind}:{idempotency_key}")  # type: ignore[return-value]
                 for kind in ("user", "tenant", "subscription"))


def _links(outcome: SignupOutcome) -> SignupLinks:
    wid, tenant = outcome.workflow_id, outcome.tenant_id
    return SignupLinks(self=f"/v1/signup/{wid}", workflow=f"/v1/workflows/{wid}", verify="/v1/auth/verify",
                       tenant=f"/v1/tenants/{tenant}",
                       subscription=f"/v1/tenants/{tenant}/subscriptions/{outcome.subscription_id}")


def _outcome_of_failure(exc: WorkflowFailureError, base: SignupOutcome) -> SignupOutcome:
    """The outcome of a sign-up saga that already ended in failure (its error type says why)."""
    cause = exc.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = getattr(cause, "cause", None)
    kind = cause.type if isinstance(cause, ApplicationError) else None
    if kind == PAYMENT_DECLINED_ERROR:
        code = cause.details[0] if cause.details else None
        return base.model_copy(update={"status": "declined", "error_type": kind, "decline_code": code,
                                       "reason": cause.message})
    if kind in (EMAIL_TAKEN_ERROR, SLUG_TAKEN_ERROR):
        return base.model_copy(update={"status": "rejected", "error_type": kind, "reason": cause.message})
    return base.model_copy(update={"status": "failed", "error_type": kind or "SignupFailed",
                                   "reason": cause.message if cause else "cancelled or terminated"})


async def _ended_outcome(client: Client, base: SignupOutcome) -> SignupOutcome:
    """A sign-up under this id already ended: its result (success) or its failure says how."""
    try:
        return await client.get_workflow_handle(base.workflow_id, result_type=SignupOutcome).result()
    except WorkflowFailureError as exc:
        return _outcome_of_failure(exc, base)


def _answer(outcome: SignupOutcome) -> SignupResponse:
    """201 for an active sign-up; every other outcome is a problem (nothing is left behind)."""
    extensions = {"workflow_id": outcome.workflow_id}
    if outcome.status == "active":
        return SignupResponse(status="active", subscription_status=outcome.subscription_status,
                              user_id=outcome.user_id, tenant_id=outcome.tenant_id,
                              subscription_id=outcome.subscription_id, workflow_id=outcome.workflow_id,
                              links=_links(outcome))
    if outcome.status == "declined":
        raise Problem(PAYMENT_DECLINED, "The first payment was declined; nothing was created. Try another payment "
                      "method.", decline_code=outcome.decline_code, **extensions)
    if outcome.status == "rejected" and outcome.error_type == EMAIL_TAKEN_ERROR:
        raise Problem(EMAIL_ALREADY_REGISTERED, "An account with this email address already exists.", **extensions)
    if outcome.status == "rejected" and outcome.error_type == SLUG_TAKEN_ERROR:
        raise Problem(SLUG_TAKEN, "Another tenant already uses this slug; choose another. Nothing was created.",
                      **extensions)
    raise Problem(SIGNUP_FAILED, "The sign-up could not be completed and was undone; nothing was charged or "
                  "kept. Retry later with a new Idempotency-Key.", headers={"Retry-After": "30"}, **extensions)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=SignupResponse,
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
async def signup(body: SignupRequest, settings: SettingsDep, temporal: TemporalConnectorDep,
                 idempotency_key: IdempotencyKey = None) -> SignupResponse:
    plan = resolve_plan(settings, body.plan)
    client = await temporal.get()
    user_id, tenant_id, subscription_id = _ids(idempotency_key)
    workflow_id = signup_workflow_id(user_id)
    fingerprint = request_fingerprint(body)
    base = SignupOutcome(status="pending", workflow_id=workflow_id, user_id=user_id, tenant_id=tenant_id,
                         subscription_id=subscription_id, request_fingerprint=fingerprint)
    password_hash = await passwords.hash_password(settings, body.password.get_secret_value())

    operation = WithStartWorkflowOperation(
        PAID_SIGNUP_WORKFLOW,
        PaidSignupInput(
            user_id=user_id, tenant_id=tenant_id, subscription_id=subscription_id, email=body.email,
            password_hash=password_hash, display_name=body.display_name, tenant_name=body.tenant_name,
            slug=body.slug, plan=plan, payment_method=body.payment_method,
            verification_timeout_seconds=int(settings.registration_verification_timeout.total_seconds()),
            request_fingerprint=fingerprint, dunning_schedule_days=settings.billing_dunning_days,
            subscription_poll_seconds=settings.billing_poll_seconds,
        ),
        id=workflow_id, task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_TENANT_ID, str(tenant_id)),
                                                 SearchAttributePair(SA_USER_ID, str(user_id))]),
        static_summary=f"Paid sign-up: user {user_id}, tenant {tenant_id}, plan {plan.id}",
    )
    try:
        outcome: SignupOutcome = await answer_within(client.execute_update_with_start_workflow(
            UPDATE_SIGNUP_OUTCOME, start_workflow_operation=operation, result_type=SignupOutcome,
        ))
    except WorkflowAlreadyStartedError:
        outcome = await _ended_outcome(client, base)  # same Idempotency-Key as a sign-up that already ended
    except WorkflowUpdateFailedError:
        outcome = await _ended_outcome(client, base)  # it ended while the update was being delivered
    except Problem as exc:
        if exc.kind is not WORKFLOW_ENGINE_UNAVAILABLE:
            raise
        raise Problem(WORKFLOW_ENGINE_UNAVAILABLE, "The sign-up was accepted but not decided in time; repeat the "
                      "request with the same Idempotency-Key, or follow links.self, to see its outcome.",
                      headers=exc.headers, workflow_id=workflow_id,
                      links={"self": f"/v1/signup/{workflow_id}"}) from None

    if outcome.request_fingerprint and outcome.request_fingerprint != fingerprint:
        raise Problem(IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was already used for a different sign-up.")
    log.info("signup decided", extra={"workflow_id": workflow_id, "tenant_id": str(tenant_id),
                                      "status": outcome.status, "error_type": outcome.error_type})
    return _answer(outcome)


@router.get(
    "/{workflow_id}", response_model=SignupStatusView, summary="Where a sign-up stands",
    description="`pending` while the saga decides; then `active`, `declined` (with `decline_code`), `rejected` or "
                "`failed` — in the last three nothing was left behind. No personal data in the answer.",
    responses=problem_responses(404, 422, 503),
)
async def signup_status(workflow_id: SignupWorkflowId, temporal: TemporalConnectorDep) -> SignupStatusView:
    client = await temporal.get()
    handle = client.get_workflow_handle(workflow_id)
    try:
        outcome = await handle.query(QUERY_SIGNUP_OUTCOME, result_type=SignupOutcome, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise Problem(NOT_FOUND, "No sign-up with this id.") from None
        raise
    return SignupStatusView(**outcome.model_dump(include=set(SignupStatusView.model_fields)))

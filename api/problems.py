"""RFC 9457 problem+json: the catalogue of problem types and the one place errors become HTTP answers.

Routes raise `Problem(KIND, detail)`; framework errors (validation, unknown route, wrong method),
Temporal outages and unhandled exceptions are mapped here too, so every error body has the same shape:
`type`, `title`, `status`, `detail`, `instance` (+ `errors` for validation failures). A saga's refusal (an
ApplicationError type from models/errors.py) becomes its problem through one table, `REFUSALS`.

A dependency that is down (PostgreSQL, Redis, Temporal) answers 503 with `Retry-After` and a problem type
naming it, never 500: the caller did nothing wrong and may retry as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from models import errors
from prognet.telemetry import current_trace_id

log = logging.getLogger("prognet.api")

PROBLEM_BASE = "https://prognet.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


# --- the catalogue ---------------------------------------------------------------------------------
MALFORMED_JSON = ProblemType("malformed-json", 400, "Malformed JSON body")
BAD_REQUEST = ProblemType("bad-request", 400, "Bad request")
INVALID_TOKEN = ProblemType("invalid-token", 400, "Invalid token")
INVALID_IDEMPOTENCY_KEY = ProblemType("invalid-idempotency-key", 400, "Invalid Idempotency-Key header")
INVALID_CURSOR = ProblemType("invalid-cursor", 400, "Invalid pagination cursor")
INVALID_TIME_WINDOW = ProblemType("invalid-time-window", 400, "Invalid time window")
INVALID_LAST_EVENT_ID = ProblemType("invalid-last-event-id", 400, "Invalid Last-Event-ID")
UNAUTHENTICATED = ProblemType("unauthenticated", 401, "Authentication required")
INVALID_ACCESS_TOKEN = ProblemType("invalid-access-token", 401, "Invalid access token")
INVALID_CREDENTIALS = ProblemType("invalid-credentials", 401, "Invalid credentials")
INVALID_REFRESH_TOKEN = ProblemType("invalid-refresh-token", 401, "Invalid refresh token")
PAYMENT_DECLINED = ProblemType("payment-declined", 402, "Payment declined")
ACCOUNT_NOT_VERIFIED = ProblemType("account-not-verified", 403, "Account not verified")
ACCOUNT_DISABLED = ProblemType("account-disabled", 403, "Account disabled")
FORBIDDEN = ProblemType("forbidden", 403, "Forbidden")
CURRENT_PASSWORD_INCORRECT = ProblemType("current-password-incorrect", 403, "Current password incorrect")
INVITATION_EMAIL_MISMATCH = ProblemType("invitation-email-mismatch", 403, "Invitation is for another email address")
NOT_FOUND = ProblemType("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "Method not allowed")
EMAIL_ALREADY_REGISTERED = ProblemType("email-already-registered", 409, "Email already registered")
TOKEN_ALREADY_USED = ProblemType("token-already-used", 409, "Token already used")
SLUG_TAKEN = ProblemType("slug-taken", 409, "Slug already taken")
LAST_OWNER = ProblemType("last-owner", 409, "A tenant needs at least one owner")
ALREADY_A_MEMBER = ProblemType("already-a-member", 409, "Already a member")
INVITATION_ALREADY_ACCEPTED = ProblemType("invitation-already-accepted", 409, "Invitation already accepted")
TENANT_NOT_ACTIVE = ProblemType("tenant-not-active", 409, "Tenant not active")
PLAN_UNCHANGED = ProblemType("plan-unchanged", 409, "Already on this plan")
EMAIL_NOT_DEAD_LETTERED = ProblemType("email-not-dead-lettered", 409, "Email is not a dead letter")
EMAIL_ADDRESS_SUPPRESSED = ProblemType("email-address-suppressed", 409, "Email address suppressed")
WEBHOOK_DELIVERY_NOT_DEAD_LETTERED = ProblemType(
    "webhook-delivery-not-dead-lettered", 409, "Webhook delivery is not a dead letter"
)
INCIDENT_RESOLVED = ProblemType("incident-resolved", 409, "Incident already resolved")
SUBSCRIPTION_EXISTS = ProblemType("subscription-exists", 409, "The tenant already has a live subscription")
SUBSCRIPTION_ENDED = ProblemType("subscription-ended", 409, "Subscription has ended")
NO_BILLING_ACCOUNT = ProblemType("no-billing-account", 409, "Tenant has no Stripe customer")
TOKEN_EXPIRED = ProblemType("token-expired", 410, "Token expired")
INVITATION_EXPIRED = ProblemType("invitation-expired", 410, "Invitation expired or revoked")
PAYLOAD_TOO_LARGE = ProblemType("payload-too-large", 413, "Request body too large")
UNSUPPORTED_MEDIA_TYPE = ProblemType("unsupported-media-type", 415, "Unsupported media type")
VALIDATION_FAILED = ProblemType("validation-failed", 422, "Request validation failed")
WEBHOOK_TARGET_REFUSED = ProblemType("webhook-target-refused", 422, "Webhook target refused")
UNKNOWN_EVENT_TYPE = ProblemType("unknown-event-type", 422, "Unknown event type")
UNKNOWN_PLAN = ProblemType("unknown-plan", 422, "Unknown plan")
UNDECODABLE_PAYLOAD = ProblemType("undecodable-payload", 422, "Payload cannot be decrypted")
IDEMPOTENCY_KEY_REUSED = ProblemType("idempotency-key-reused", 422, "Idempotency-Key reused with a different request")
TOO_MANY_ATTEMPTS = ProblemType("too-many-attempts", 429, "Too many attempts")
TOO_MANY_STREAMS = ProblemType("too-many-streams", 429, "Too many open streams")
INTERNAL_ERROR = ProblemType("internal-error", 500, "Internal server error")
SERVICE_UNAVAILABLE = ProblemType("service-unavailable", 503, "Service unavailable")
WORKFLOW_ENGINE_UNAVAILABLE = ProblemType("workflow-engine-unavailable", 503, "Workflow engine unavailable")
DATABASE_UNAVAILABLE = ProblemType("database-unavailable", 503, "Database unavailable")
CACHE_UNAVAILABLE = ProblemType("cache-unavailable", 503, "Cache unavailable")
STREAMS_AT_CAPACITY = ProblemType("streams-at-capacity", 503, "This server holds as many streams as it can")
SIGNUP_FAILED = ProblemType("signup-failed", 503, "Sign-up could not be completed")

_BY_STATUS = {  # framework HTTPExceptions carry only a status code
    400: BAD_REQUEST,
    401: UNAUTHENTICATED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: PAYLOAD_TOO_LARGE,
    415: UNSUPPORTED_MEDIA_TYPE,
    422: VALIDATION_FAILED,
}

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
BEARER_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Problem(Exception):
    """Raise from a route or dependency; becomes a problem+json response."""

    def __init__(
        self, kind: ProblemType, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


@dataclass(frozen=True)
class Refusal:
    kind: ProblemType
    detail: str
    headers: dict[str, str] | None = None


# --- what a saga's refusal (its error type) answers: the caller can act on these ----------------------
REFUSALS: dict[str, Refusal] = {
    errors.EMAIL_TAKEN: Refusal(EMAIL_ALREADY_REGISTERED, "An account with this email address already exists."),
    errors.SLUG_TAKEN: Refusal(SLUG_TAKEN, "Another tenant already uses this slug; choose another."),
    errors.PAYMENT_DECLINED: Refusal(
        PAYMENT_DECLINED, "The first payment was declined; nothing was created. Try another payment method."
    ),
    errors.SIGNUP_FAILED: Refusal(
        SIGNUP_FAILED,
        "The sign-up could not be completed and was undone; nothing was "
        "charged or kept. Retry later with a new Idempotency-Key.",
        headers={"Retry-After": "30"},
    ),
    errors.SUBSCRIPTION_EXISTS: Refusal(
        SUBSCRIPTION_EXISTS, "Cancel the current subscription or change its plan instead."
    ),
    errors.SUBSCRIPTION_ENDED: Refusal(SUBSCRIPTION_ENDED, "This subscription has ended."),
    errors.PLAN_UNCHANGED: Refusal(PLAN_UNCHANGED, "The subscription is already on this plan."),
    errors.INVALID_PLAN: Refusal(UNKNOWN_PLAN, "This plan is not available to this subscription (another currency)."),
}


def refusal(error_type: str | None, *, detail: str | None = None, **extensions: Any) -> Problem | None:
    """The problem a saga's refusal answers (`detail` replaces the catalogue's wording); None for an error type
    the caller cannot act on."""
    found = REFUSALS.get(error_type) if error_type else None
    if found is None:
        return None
    return Problem(found.kind, detail or found.detail, headers=dict(found.headers or {}), **extensions)


def problem_body(kind: ProblemType, detail: str, instance: str, **extensions: Any) -> dict[str, Any]:
    body = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": instance,
        **extensions,
    }
    if trace_id := current_trace_id():  # a user's error report leads straight to the trace
        body["trace_id"] = trace_id
    return body


def problem_response(
    kind: ProblemType, detail: str, instance: str, *, headers: dict[str, str] | None = None, **extensions: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(kind, detail, instance, **extensions),
        status_code=kind.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _public_errors(errors: Any) -> list[dict[str, Any]]:
    """Field, message and error type only: never echo the input (it may be a password)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.kind, exc.detail, request.url.path, headers=exc.headers, **exc.extensions)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            MALFORMED_JSON, "The request body is not valid JSON.", request.url.path, errors=_public_errors(errors)
        )
    return problem_response(
        VALIDATION_FAILED, "One or more fields are missing or invalid.", request.url.path, errors=_public_errors(errors)
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _BY_STATUS.get(exc.status_code) or ProblemType("http-error", exc.status_code, "HTTP error")
    detail = exc.detail if isinstance(exc.detail, str) else kind.title
    if exc.status_code == 404:
        detail = "No resource at this path."
    return problem_response(kind, detail, request.url.path, headers=getattr(exc, "headers", None))


_TRANSIENT_RPC = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED)
_WORKFLOW_NOT_READY = "temporal.api.errordetails.v1.WorkflowNotReadyFailure"


def engine_unavailable(exc: RPCError) -> bool:
    """The workflow engine cannot take the call now but will: unreachable, overloaded, or (an update) the
    workflow's last task failed, typically timed out on a loaded worker, and is being retried."""
    if exc.status in _TRANSIENT_RPC:
        return True
    if exc.status == RPCStatusCode.FAILED_PRECONDITION:
        try:
            details = exc.grpc_status.details
        except Exception:  # an unparsable status says nothing more
            return False
        return any(d.type_url.endswith(_WORKFLOW_NOT_READY) for d in details)
    return False


async def _on_rpc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    if engine_unavailable(exc):
        log.warning("temporal unavailable", extra={"path": request.url.path, "rpc_status": exc.status.name})
        return problem_response(
            WORKFLOW_ENGINE_UNAVAILABLE,
            "The workflow engine is unreachable; retry later.",
            request.url.path,
            headers={"Retry-After": "5"},
        )
    return await _on_unhandled(request, exc)


DEPENDENCY_RETRY_AFTER = "5"

# Redis wraps every socket error in its own ConnectionError/TimeoutError; asyncpg's refused, missing (Unix
# socket) or reset connections may surface as a bare OSError, which is the database's only when raised there.
_CACHE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_DATABASE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
)
_DATABASE_MODULES = ("asyncpg", "sqlalchemy")


def _raised_by_database_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_DATABASE_MODULES):
            return True
        tb = tb.tb_next
    return False


def unavailable_dependency(exc: BaseException) -> ProblemType | None:
    """The outage `exc` (or an exception it was raised from) reports, if it reports one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CACHE_ERRORS):
            return CACHE_UNAVAILABLE
        if (
            isinstance(current, _DATABASE_ERRORS)
            or (isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated)
            or (isinstance(current, OSError) and _raised_by_database_driver(current))
        ):
            return DATABASE_UNAVAILABLE
        current = current.__cause__ or current.__context__
    return None


async def _on_dependency_error(request: Request, exc: Exception) -> JSONResponse:
    kind = unavailable_dependency(exc)
    if kind is None:
        return await _on_unhandled(request, exc)
    log.warning(
        "dependency unavailable",
        extra={"path": request.url.path, "problem": kind.slug, "error": type(exc).__name__},
    )
    name = "database" if kind is DATABASE_UNAVAILABLE else "cache (Redis)"
    return problem_response(
        kind,
        f"The {name} is unreachable; retry later.",
        request.url.path,
        headers={"Retry-After": DEPENDENCY_RETRY_AFTER},
    )


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path, "method": request.method})
    return problem_response(INTERNAL_ERROR, "An unexpected error occurred.", request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RPCError, _on_rpc_error)
    # Handled by the exception middleware (the answer ends the request normally: the connection stays up),
    # unlike the catch-all below, which Starlette re-raises to the server after answering.
    for error in (*_CACHE_ERRORS, *_DATABASE_ERRORS, sqlalchemy.exc.DBAPIError, OSError):
        app.add_exception_handler(error, _on_dependency_error)
    app.add_exception_handler(Exception, _on_unhandled)


class ProblemDetails(BaseModel):
    """The shape of every error body (RFC 9457)."""

    type: str = Field(examples=[PROBLEM_BASE + "invalid-credentials"])
    title: str
    status: int
    detail: str
    instance: str
    errors: list[dict[str, Any]] | None = Field(None, description="Offending fields, for validation problems.")
    trace_id: str | None = Field(None, description="The request's trace (32 hex digits), for a support request.")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json answers."""
    return {s: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}} for s in statuses}


DEPENDENCY_OUTAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ProblemDetails,
        "content": {PROBLEM_MEDIA_TYPE: {}},
        "description": "A dependency is down (`database-unavailable`, `cache-unavailable`, "
        "`workflow-engine-unavailable`); retry after `Retry-After` seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    }
}

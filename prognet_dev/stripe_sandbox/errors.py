"""Stripe's error envelope: {"error": {"type", "code", "message", "param", ...}} with Stripe's HTTP statuses."""

from __future__ import annotations

from typing import Any

# HTTP status → Stripe error type, for errors raised without an explicit type (fault injection)
TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "card_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "idempotency_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
}

DEFAULT_MESSAGES = {
    400: "Invalid request (injected by the Stripe sandbox).",
    401: "Invalid API Key provided.",
    402: "Your card was declined.",
    403: "The provided key does not have access to this resource.",
    404: "Unrecognized request URL.",
    409: "There is currently another in-progress request using this idempotency key.",
    429: "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
    500: "An unknown error occurred (injected by the Stripe sandbox).",
    502: "Bad gateway (injected by the Stripe sandbox).",
    503: "Service unavailable (injected by the Stripe sandbox).",
}

DEFAULT_CODES = {402: "card_declined", 429: "rate_limit"}


class StripeError(Exception):
    """Raised by resource handlers; rendered as Stripe's error envelope.

    `store_idempotent`: whether a request carrying an Idempotency-Key stores this outcome for replay. Stripe stores
    the result once an endpoint began executing (card declines, missing resources) but not parameter-validation
    failures, rate limits or concurrency conflicts.
    """

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        store_idempotent: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or DEFAULT_MESSAGES.get(status, "Error"))
        self.status = status
        self.message = message or DEFAULT_MESSAGES.get(status, "Error")
        self.type = type or TYPE_FOR_STATUS.get(status, "api_error")
        self.code = code if code is not None else DEFAULT_CODES.get(status)
        self.param = param
        self.decline_code = decline_code
        self.extra = dict(extra or {})
        self.store_idempotent = status not in (400, 401, 409, 429) if store_idempotent is None else store_idempotent

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            err["param"] = self.param
        if self.decline_code:
            err["decline_code"] = self.decline_code
        if request_id:
            err["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        err.update(self.extra)
        return {"error": err}


def resource_missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def unknown_parameter(name: str) -> StripeError:
    return StripeError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def invalid_parameter(name: str, message: str, code: str = "parameter_invalid") -> StripeError:
    return StripeError(400, message, code=code, param=name)

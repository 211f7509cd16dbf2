"""The error types that cross the workflow boundary, and the one way to read a failure's type.

Activities and workflows raise `ApplicationError(..., type=X)` with X from here; workflows and the API read it
back with `error_type(err)`. `api/problems.py` maps the types a caller can act on to HTTP problems.
Importable from workflow code: it needs only `temporalio.exceptions`.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, TemporalError

# --- users and registration
EMAIL_TAKEN = "EmailAlreadyRegistered"  # another account has this email: the registration created nothing
REGISTRATION_FAILED = "RegistrationFailed"  # the pending user could not be created (the saga unwound)
USER_NOT_FOUND = "UserNotFound"  # the pending user vanished before activation
EMAIL_CHANGE_FAILED = "EmailChangeFailed"  # the new address could not be reserved (the saga unwound)
EMAIL_CHANGE_GONE = "EmailChangeGone"  # the email change is no longer pending (superseded by a newer one)

# --- tenants
SLUG_TAKEN = "SlugTaken"  # another tenant has this slug: the provisioning created nothing
TENANT_FAILED = "TenantFailed"  # the tenant row could not be created (the saga unwound)

# --- paid sign-up
PAYMENT_DECLINED = "PaymentDeclined"  # the first payment was declined; details[0] is Stripe's decline code
SIGNUP_FAILED = "SignupFailed"  # any other failure of a paid sign-up, after everything was unwound

# --- billing
STRIPE_PERMANENT_ERROR = "StripePermanentError"  # Stripe refused the call; retrying cannot help
INVOICE_RACE = "InvoiceRace"  # another run issued the same invoice number concurrently: retry
INVOICE_NOT_OPEN = "InvoiceNotOpen"  # the invoice is no longer open, so it cannot change state
INVOICE_NOT_FOUND = "InvoiceNotFound"  # no invoice with this id
SUBSCRIPTION_EXISTS = "SubscriptionExists"  # the tenant already has a live subscription
SUBSCRIPTION_ENDED = "SubscriptionEnded"  # canceled or unpaid: nothing left to change
PLAN_UNCHANGED = "PlanUnchanged"  # a change to the plan it is already on
INVALID_PLAN = "InvalidPlan"  # a plan this subscription cannot move to (another currency)

# --- email
SMTP_PERMANENT = "SmtpPermanentFailure"  # the relay refused the message for good (5xx): never retried
RENDER_FAILED = "RenderFailed"  # the template or its parameters cannot make a message: never retried
RECIPIENT_GONE = "RecipientGone"  # the user, token, tenant or invitation the message is about is gone
SEND_RATE_UNAVAILABLE = "SendRateUnavailable"  # the shared send-rate limiter (Redis) cannot be reached: not sent,
# retried with the send's backoff (never sent without the limit)

# --- external services
CIRCUIT_OPEN = "CircuitOpen"  # the service's circuit breaker is open: retryable, `next_retry_delay` = when to try again
# details[0] = {"service": name, "until": ISO 8601, "retry_after_seconds": float}

# --- invitations
INVITATION_NOT_FOUND = "InvitationNotFound"  # no invitation with this id
INVITATION_CLOSED = "InvitationClosed"  # the invitation was already accepted, revoked or expired


def failure_cause(err: BaseException) -> BaseException:
    """What a failure is about: the error inside the wrappers Temporal puts around it (WorkflowFailureError,
    WorkflowUpdateFailedError, ChildWorkflowError, ActivityError, …), down to the first ApplicationError.
    That ApplicationError's own cause is how it came about, not what it means, so the walk stops there."""
    while not isinstance(err, ApplicationError) and isinstance(err, TemporalError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def error_type(err: BaseException | None) -> str | None:
    """The ApplicationError type a failure comes down to (None when it is not an ApplicationError, e.g. a
    cancellation or a timeout)."""
    cause = failure_cause(err) if err is not None else None
    return cause.type if isinstance(cause, ApplicationError) else None

"""Names shared by workflows, workers and the API: task queues, handler names, search attributes, IDs.

Constants, never repeated string literals: a typo in a name silently creates a new workflow type or queue.
"""

from __future__ import annotations

import uuid

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "prognet-main"

QUERY_SAGA_STATE = "saga_state"
SIGNAL_OPERATOR_DECISION = "operator_decision"
# the worker's extern functions sagas call outside replay (workers/interceptors.py): metrics, never workflow state
EXTERN_SAGA_STATUS = "prognet_saga_status"
EXTERN_COMPENSATION_FAILED = "prognet_compensation_failed"

# registration
REGISTRATION_WORKFLOW = "Registration"
UPDATE_REGISTRATION_ACCEPTED = "accepted"
SIGNAL_VERIFY_EMAIL = "verify_email"
# a paid sign-up → its registration, once past its pivot (the first payment): send the held verification email
SIGNAL_SEND_VERIFICATION_EMAIL = "send_verification_email"

# email change (workflows/email_change.py): one workflow per request, `email-change-{change id}`
EMAIL_CHANGE_WORKFLOW = "EmailChange"
UPDATE_EMAIL_CHANGE_ACCEPTED = "accepted"  # answers once the new address is reserved (or refused)


def email_change_workflow_id(change_id: uuid.UUID | str) -> str:
    return f"email-change-{change_id}"


# Custom search attributes; defined for every server in temporal-config/search-attributes.json.
SA_TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
SA_USER_ID = SearchAttributeKey.for_keyword("UserId")
SA_SAGA_STATUS = SearchAttributeKey.for_keyword("SagaStatus")
SA_SAGA_STEP = SearchAttributeKey.for_keyword("SagaStep")
SA_SUBSCRIPTION_ID = SearchAttributeKey.for_keyword("SubscriptionId")


def registration_workflow_id(user_id: uuid.UUID | str) -> str:
    return f"registration-{user_id}"


# tenant provisioning
TENANT_PROVISIONING_WORKFLOW = "TenantProvisioning"
UPDATE_TENANT_ACCEPTED = "accepted"

# invitations
INVITATION_WORKFLOW = "Invitation"
SIGNAL_ACCEPT_INVITATION = "accept"
SIGNAL_REVOKE_INVITATION = "revoke"


def tenant_workflow_id(tenant_id: uuid.UUID | str) -> str:
    return f"tenant-{tenant_id}"


def invitation_workflow_id(invitation_id: uuid.UUID | str) -> str:
    return f"invitation-{invitation_id}"


# email delivery: its own task queue, so its rate limit and its workers are its own
EMAIL_TASK_QUEUE = "prognet-email"
EMAIL_DELIVERY_WORKFLOW = "EmailDelivery"
SIGNAL_EMAIL_DECISION = "email_decision"
QUERY_EMAIL_STATE = "email_state"


def email_workflow_id(message_id: uuid.UUID | str) -> str:
    return f"email-{message_id}"


def email_message_id(parent_workflow_id: str, purpose: str) -> uuid.UUID:
    """A business key: the same parent step always names the same message, so a retried start is a no-op."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"prognet:email:{parent_workflow_id}:{purpose}")


EMAIL_SEND_TASK_QUEUE = "prognet-email-send"  # SMTP sends only: the task-queue rate limit is the send rate


# subscriptions and billing cycles (workflows/subscription.py, workflows/billing_cycle.py)
SUBSCRIPTION_WORKFLOW = "Subscription"
BILLING_CYCLE_WORKFLOW = "BillingCycle"
QUERY_SUBSCRIPTION_STATE = "subscription_state"
QUERY_BILLING_CYCLE_STATE = "billing_cycle_state"
UPDATE_SUBSCRIPTION_ACCEPTED = "accepted"  # the API's update-with-start: answers once the row exists
UPDATE_CANCEL_SUBSCRIPTION = "cancel"
UPDATE_CHANGE_PLAN = "change_plan"
UPDATE_PAYMENT_METHOD = "payment_method"  # to a subscription, which forwards it to an open cycle by signal
SIGNAL_PAYMENT_METHOD_UPDATED = "payment_method_updated"  # to a running cycle
SIGNAL_START_CYCLE = "start_cycle"  # the hook a Temporal Schedule's action uses
SIGNAL_PAYMENT_OUTCOME = "payment_outcome"  # the Stripe webhook endpoint → the running cycle (never starts one)
# The Stripe events `POST /v1/webhooks/stripe` acts on, with the payment outcome each one tells a cycle. Its
# endpoint is subscribed to these alone (Stripe's `enabled_events`; the embedded sandbox's endpoint too), so Stripe
# does not send, and the API does not verify and dedupe, the other events of a charge (`payment_intent.created`,
# `charge.succeeded`, ...).
STRIPE_PAYMENT_OUTCOMES = {"payment_intent.succeeded": "succeeded", "payment_intent.payment_failed": "failed"}
STRIPE_WEBHOOK_EVENTS = tuple(STRIPE_PAYMENT_OUTCOMES)
SIGNAL_BILLING_CYCLE_STATUS = "billing_cycle_status"  # a cycle → its parent subscription


def charging_key(workflow_id: str) -> str:
    """Redis: billing cycle `workflow_id` is in a charge call, or had a success from it. Such a cycle goes on to
    paid and ends in the same workflow task, so the webhook endpoint does not signal that success to it: a signal
    arriving during that task makes the server refuse the task's completion, and the task runs again from the
    start. (Stripe may send the event before its answer to the call is back: the note comes before the call.)"""
    return f"stripe:charging:{workflow_id}"


CHARGING_TTL_SECONDS = 120  # beyond a charge call (20 s at most) and the workflow task that ends the cycle


BILLING_TRIGGER_WORKFLOW = "BillingTrigger"  # what a subscription's Schedule starts: it signals `start_cycle`


def subscription_workflow_id(subscription_id: uuid.UUID | str) -> str:
    return f"subscription-{subscription_id}"


def billing_schedule_id(subscription_id: uuid.UUID | str) -> str:
    """The Temporal Schedule (Schedules page) that drives a subscription's cycles."""
    return f"billing-schedule-{subscription_id}"


def billing_cycle_workflow_id(
    subscription_id: uuid.UUID | str, period_index: int, kind: str = "period", seq: int = 0
) -> str:
    """`billing-{subscription_id}-{period}`; a proration charge of an upgrade adds `-proration-{seq}`."""
    base = f"billing-{subscription_id}-{period_index}"
    return base if kind == "period" else f"{base}-{kind}-{seq}"


# paid sign-up: user + tenant + first payment in one parent saga (workflows/paid_signup.py)
PAID_SIGNUP_WORKFLOW = "PaidSignup"
UPDATE_SIGNUP_OUTCOME = "outcome"  # the API's update-with-start: answers once paid, or once unwound


def signup_workflow_id(signup_id: uuid.UUID | str) -> str:
    return f"signup-{signup_id}"


SIGNAL_REGISTRATION_PROGRESS = "registration_progress"  # a child registration → its parent: user created / rejected
QUERY_SIGNUP_OUTCOME = "signup_outcome"  # the outcome so far (status "pending" until the saga is decided)


# outbound webhooks (webhooks/dispatcher.py → workflows/webhook_delivery.py): HTTP attempts on their own queue
WEBHOOK_TASK_QUEUE = "prognet-webhooks"
WEBHOOK_DELIVERY_WORKFLOW = "WebhookDelivery"
SIGNAL_WEBHOOK_DECISION = "webhook_decision"  # a dead letter's retry or discard (the API, an operator)
QUERY_WEBHOOK_STATE = "webhook_state"


def webhook_delivery_id(endpoint_id: uuid.UUID | str, event_id: uuid.UUID | str) -> uuid.UUID:
    """A business key: one event to one endpoint is one delivery, however often the event is read."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"prognet:webhook:{endpoint_id}:{event_id}")


def webhook_workflow_id(delivery_id: uuid.UUID | str) -> str:
    return f"webhook-{delivery_id}"


# alerting (workflows/alert_evaluator.py, workflows/incident.py): one evaluator run a minute, one workflow per
# incident `incident-{rule}-{dedupe key}`
ALERT_EVALUATOR_WORKFLOW = "AlertEvaluator"
ALERT_EVALUATOR_SCHEDULE = "alert-evaluator"  # the Schedules page: pause it to silence every rule
INCIDENT_WORKFLOW = "Incident"
INCIDENT_ID_PREFIX = "incident-"
SIGNAL_INCIDENT_FIRE = "fire"  # the evaluator (signal-with-start): the condition holds this minute
SIGNAL_INCIDENT_CLEAR = "condition_clear"  # the evaluator: the condition does not hold this minute
SIGNAL_INCIDENT_ACK = "acknowledge"  # the API or the Temporal UI: {"by": "...", "note": "..."}
SIGNAL_INCIDENT_RESOLVE = "resolve"  # the API or the Temporal UI: {"by": "...", "note": "..."}
QUERY_INCIDENT = "incident"
SA_INCIDENT_SEVERITY = SearchAttributeKey.for_keyword("IncidentSeverity")
SA_INCIDENT_STATE = SearchAttributeKey.for_keyword("IncidentState")

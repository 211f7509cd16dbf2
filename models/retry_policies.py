"""Retry policies of saga steps and compensations, per external service, as they cross the workflow boundary.

Whoever starts a saga puts the current settings (`RETRY_STRIPE`, `RETRY_COMPENSATION_DATABASE`, …) into its
input (`WithRetryPolicies.retry_policies`; `models.retry_interceptor.RetryPoliciesInterceptor` does it for every
client start, `Saga.start_child` for child sagas). The input is in the history, so a changed setting applies to
executions started after the change and never alters one already running (nor its replay). A saga started
without them (an operator's `temporal workflow start`) gets the defaults below, which are the settings' defaults.

SMTP and outbound webhooks are not here: the email and webhook delivery workflows read their own retry settings
(`EMAIL_RETRY_*`, `WEBHOOK_RETRY_SCHEDULE_SECONDS`) through a local activity whose result is a history marker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from temporalio.common import RetryPolicy

from models import activity_names as act
from models.errors import CIRCUIT_OPEN

Service = Literal["database", "stripe"]

# The activities of saga steps and compensations that call Stripe; every other one works on our database.
STRIPE_ACTIVITIES = frozenset(
    {
        act.CREATE_STRIPE_CUSTOMER,
        act.DELETE_STRIPE_CUSTOMER,
        act.CREATE_PAYMENT_INTENT,
        act.RETRIEVE_PAYMENT_INTENT,
        act.REFUND_PAYMENT,
    }
)


def service_of(activity: str) -> Service:
    return "stripe" if activity in STRIPE_ACTIVITIES else "database"


class RetrySpec(BaseModel):
    """One retry policy: Temporal retries a failed activity after initial_interval, then each wait
    backoff_coefficient times longer, at most maximum_interval, until maximum_attempts (0: without limit)."""

    initial_interval_seconds: float = Field(1.0, gt=0, description="Wait before the second attempt.")
    backoff_coefficient: float = Field(2.0, ge=1, description="Each further wait is this many times longer.")
    maximum_interval_seconds: float = Field(60.0, gt=0, description="Longest wait between two attempts.")
    maximum_attempts: int = Field(0, ge=0, description="Attempts in all, the first included; 0: without limit.")

    @model_validator(mode="after")
    def _interval_order(self) -> RetrySpec:
        if self.maximum_interval_seconds < self.initial_interval_seconds:
            raise ValueError("maximum_interval_seconds must not be below initial_interval_seconds")
        return self

    def to_temporal(self) -> RetryPolicy:
        # An open circuit is never retried by Temporal: the saga waits out the cool-down on a timer instead.
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.initial_interval_seconds),
            backoff_coefficient=self.backoff_coefficient,
            maximum_interval=timedelta(seconds=self.maximum_interval_seconds),
            maximum_attempts=self.maximum_attempts,
            non_retryable_error_types=[CIRCUIT_OPEN],
        )


class CompensationRetrySpec(RetrySpec):
    """A compensation gives up sooner than a forward step (which waits for its service without limit): after its
    attempts the saga parks in awaiting_operator. Its own defaults, so a setting that names one field keeps them."""

    maximum_interval_seconds: float = Field(30.0, gt=0, description="Longest wait between two attempts.")
    maximum_attempts: int = Field(5, ge=0, description="Attempts in all, the first included; 0: without limit.")


class SagaRetryPolicies(BaseModel):
    step_database: RetrySpec = Field(default_factory=RetrySpec)
    step_stripe: RetrySpec = Field(default_factory=RetrySpec)
    compensation_database: CompensationRetrySpec = Field(default_factory=CompensationRetrySpec)
    compensation_stripe: CompensationRetrySpec = Field(default_factory=CompensationRetrySpec)

    def for_step(self, activity: str) -> RetryPolicy:
        spec: RetrySpec = getattr(self, f"step_{service_of(activity)}")
        return spec.to_temporal()

    def for_compensation(self, activity: str) -> RetryPolicy:
        spec: RetrySpec = getattr(self, f"compensation_{service_of(activity)}")
        return spec.to_temporal()


class WithRetryPolicies(BaseModel):
    """Base of a saga's input: the retry policies its steps and compensations use, recorded in its history."""

    retry_policies: SagaRetryPolicies = Field(
        default_factory=SagaRetryPolicies,
        description="Set by whoever starts the saga from the RETRY_* settings; the defaults otherwise.",
    )

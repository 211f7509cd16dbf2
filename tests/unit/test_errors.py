"""One helper reads what a failure comes down to, however Temporal wrapped it."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, ChildWorkflowError

from models.errors import SIGNUP_FAILED, SLUG_TAKEN, error_type, failure_cause


def _caused(err: BaseException, cause: BaseException) -> BaseException:
    err.__cause__ = cause
    return err


def _activity_error(cause: BaseException) -> ActivityError:
    return _caused(
        ActivityError(
            "activity failed",
            scheduled_event_id=1,
            started_event_id=2,
            identity="w",
            activity_type="create_tenant",
            activity_id="1",
            retry_state=None,
        ),
        cause,
    )


def _child_error(cause: BaseException) -> ChildWorkflowError:
    return _caused(
        ChildWorkflowError(
            "child failed",
            namespace="default",
            workflow_id="tenant-1",
            run_id="r",
            workflow_type="TenantProvisioning",
            initiated_event_id=1,
            started_event_id=2,
            retry_state=None,
        ),
        cause,
    )


def test_the_type_under_every_wrapper():
    taken = ApplicationError("slug already taken", type=SLUG_TAKEN, non_retryable=True)
    assert error_type(_activity_error(taken)) == SLUG_TAKEN
    assert error_type(WorkflowFailureError(cause=_child_error(_child_error(taken)))) == SLUG_TAKEN
    assert error_type(WorkflowUpdateFailedError(taken)) == SLUG_TAKEN
    assert failure_cause(WorkflowFailureError(cause=_child_error(taken))) is taken


def test_the_first_application_error_is_what_the_failure_means():
    inner = ApplicationError("slug already taken", type=SLUG_TAKEN)
    outer = _caused(ApplicationError("the sign-up failed", type=SIGNUP_FAILED), _child_error(inner))
    assert error_type(WorkflowFailureError(cause=outer)) == SIGNUP_FAILED


def test_no_application_error_has_no_type():
    cancelled = CancelledError("cancelled")
    assert error_type(WorkflowFailureError(cause=_child_error(cancelled))) is None
    assert failure_cause(_child_error(cancelled)) is cancelled
    assert error_type(asyncio.CancelledError()) is None and error_type(None) is None

"""Names shared by workflows, workers and the API: task queues, handler names, search attributes, IDs.

Constants, never repeated string literals: a typo in a name silently creates a new workflow type or queue.
"""

from __future__ import annotations

import uuid

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "prognet-main"

QUERY_SAGA_STATE = "saga_state"
SIGNAL_OPERATOR_DECISION = "operator_decision"

# registration
REGISTRATION_WORKFLOW = "Registration"
UPDATE_REGISTRATION_ACCEPTED = "accepted"
SIGNAL_VERIFY_EMAIL = "verify_email"

# Custom search attributes; defined for every server in temporal-config/search-attributes.json.
SA_TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
SA_USER_ID = SearchAttributeKey.for_keyword("UserId")
SA_SAGA_STATUS = SearchAttributeKey.for_keyword("SagaStatus")
SA_SAGA_STEP = SearchAttributeKey.for_keyword("SagaStep")


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

# workflow.patched ids (keep forever once released: running executions depend on them)
PATCH_EMAIL_PIPELINE = "email-pipeline"  # sagas hand their emails to EmailDelivery instead of sending

"""Activity type names: workflows refer to activities by these names only (no I/O code imported)."""

# users aggregate (activities/users.py)
CREATE_PENDING_USER = "users.create_pending_user"
DELETE_PENDING_USER = "users.delete_pending_user"
ISSUE_VERIFICATION_TOKEN = "users.issue_verification_token"
REVOKE_VERIFICATION_TOKEN = "users.revoke_verification_token"
ACTIVATE_USER = "users.activate_user"

# email change (activities/email_change.py)
RESERVE_EMAIL_CHANGE = "email_change.reserve"
ISSUE_EMAIL_CHANGE_TOKEN = "email_change.issue_token"
RELEASE_EMAIL_CHANGE = "email_change.release"
SWAP_EMAIL = "email_change.swap_email"

# tenants aggregate (activities/tenants.py)
CREATE_TENANT = "tenants.create_tenant"
MARK_TENANT_FAILED = "tenants.mark_tenant_failed"
ADD_MEMBERSHIP = "tenants.add_membership"
REMOVE_MEMBERSHIP = "tenants.remove_membership"
CREATE_BILLING_CONFIG = "tenants.create_billing_config"
DELETE_BILLING_CONFIG = "tenants.delete_billing_config"
APPLY_DEFAULT_SETTINGS = "tenants.apply_default_settings"
REMOVE_DEFAULT_SETTINGS = "tenants.remove_default_settings"
ACTIVATE_TENANT = "tenants.activate_tenant"

# invitations (activities/invitations.py)
ISSUE_INVITATION = "invitations.issue_invitation"
COMPLETE_INVITATION = "invitations.complete_invitation"
CLOSE_INVITATION = "invitations.close_invitation"

# billing / Stripe (activities/billing.py)
CREATE_STRIPE_CUSTOMER = "billing.create_stripe_customer"
DELETE_STRIPE_CUSTOMER = "billing.delete_stripe_customer"

# email delivery pipeline (activities/email_delivery.py)
QUEUE_EMAIL = "email.queue"
SEND_EMAIL = "email.send"
MARK_EMAIL = "email.mark"
SUPPRESS_ADDRESS = "email.suppress_address"
# a saga hands an email to the pipeline without a child workflow (activities/email_handoff.py)
START_EMAIL_DELIVERY = "email.start_delivery"

# invoices, payments, subscriptions (activities/billing.py, activities/subscriptions.py)
ISSUE_INVOICE = "billing.issue_invoice"
VOID_INVOICE = "billing.void_invoice"
MARK_INVOICE_PAID = "billing.mark_invoice_paid"
MARK_INVOICE_UNCOLLECTIBLE = "billing.mark_invoice_uncollectible"
RECORD_DECLINED_ATTEMPT = "billing.record_declined_attempt"
CREATE_PAYMENT_INTENT = "billing.create_payment_intent"
RETRIEVE_PAYMENT_INTENT = "billing.retrieve_payment_intent"
REFUND_PAYMENT = "billing.refund_payment"
CREATE_SUBSCRIPTION = "subscriptions.create"
SET_SUBSCRIPTION_STATUS = "subscriptions.set_status"
ENSURE_BILLING_SCHEDULE = "schedules.ensure_billing_schedule"
DELETE_BILLING_SCHEDULE = "schedules.delete_billing_schedule"
SUSPEND_TENANT = "tenants.suspend_tenant"
DISCARD_TENANT = "tenants.discard_tenant"  # paid sign-up unwinding: the tenant and its rows deleted

# outbound webhooks (activities/webhooks.py)
WEBHOOK_POLICY = "webhooks.policy"
WEBHOOK_RECORD = "webhooks.record"
WEBHOOK_ATTEMPT = "webhooks.attempt"
WEBHOOK_MARK = "webhooks.mark"
WEBHOOK_DISABLE_ENDPOINT = "webhooks.disable_endpoint"

# alerting (activities/alerting.py)
COLLECT_ALERT_SIGNALS = "alerting.collect_signals"
APPLY_ALERT_VERDICTS = "alerting.apply_verdicts"
POST_INCIDENT_WEBHOOK = "alerting.post_webhook"

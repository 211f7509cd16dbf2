"""Activity type names: workflows refer to activities by these names only (no I/O code imported)."""

# users aggregate (activities/users.py)
CREATE_PENDING_USER = "users.create_pending_user"
DELETE_PENDING_USER = "users.delete_pending_user"
ISSUE_VERIFICATION_TOKEN = "users.issue_verification_token"
REVOKE_VERIFICATION_TOKEN = "users.revoke_verification_token"
ACTIVATE_USER = "users.activate_user"

# email (activities/email.py)
SEND_VERIFICATION_EMAIL = "email.send_verification_email"

"""The audit trail's isolation: a user's own events only to that user, a tenant's only inside the tenant;
pending email changes (the email-change saga's reservation of the new address)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def upgrade() -> None:
    # Before: every row without a tenant (every user's logins, password changes…) was visible to anyone.
    # Platform processes (the relay) read everything through their own policy (relay_read, migration 0008).
    # A transaction also sees the events it wrote itself (its own xid8, migration 0007): an INSERT … RETURNING
    # needs that, whatever context the writer set, and it shows nothing the writer did not just write.
    op.execute("DROP POLICY tenant_read ON domain_events")
    op.execute(
        f"CREATE POLICY audit_read ON domain_events FOR SELECT USING ("
        f"(tenant_id IS NULL AND user_id = {USER}) OR tenant_id = {TENANT} "
        f"OR txid = pg_current_xact_id_if_assigned())"
    )

    op.create_table(
        "email_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("new_email", sa.String(length=320), nullable=False),
        sa.Column("old_email", sa.String(length=320), nullable=True),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_email_changes_user_id", "email_changes", ["user_id"])
    op.create_index("ix_email_changes_token_id", "email_changes", ["token_id"], unique=True)
    # One pending reservation per address, whoever holds it.
    op.execute(
        "CREATE UNIQUE INDEX ux_email_changes_pending ON email_changes (lower(new_email)) WHERE status = 'pending'"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON email_changes TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("email_changes")
    op.execute("DROP POLICY audit_read ON domain_events")
    op.execute(
        f"CREATE POLICY tenant_read ON domain_events FOR SELECT USING (tenant_id IS NULL OR tenant_id = {TENANT})"
    )

"""email delivery tracking and the suppression list, isolated per tenant

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
# Platform mail (tenant_id NULL) and every tenant's mail are visible to platform work only: the worker's
# email activities for tenantless messages and platform operators (models.db.transaction(platform=True)).
PLATFORM = "coalesce(current_setting('app.platform', true), '') = 'on'"


def upgrade() -> None:
    op.create_table(
        "email_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
        sa.Column("to_address", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_reply", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_email_messages_tenant_id"), "email_messages", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_email_messages_template"), "email_messages", ["template"], unique=False)
    op.create_index(op.f("ix_email_messages_state"), "email_messages", ["state"], unique=False)
    op.create_table(
        "email_suppressions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_email_suppressions_tenant_id"), "email_suppressions", ["tenant_id"], unique=False)
    op.execute(
        "CREATE UNIQUE INDEX ux_email_suppressions_address ON email_suppressions "
        "(tenant_id, lower(address)) NULLS NOT DISTINCT"
    )

    for table in ("email_messages", "email_suppressions"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        scope = f"(tenant_id = {TENANT} OR {PLATFORM})"
        op.execute(f"CREATE POLICY tenant_read ON {table} FOR SELECT USING {scope}")
        op.execute(f"CREATE POLICY tenant_insert ON {table} FOR INSERT WITH CHECK {scope}")
        op.execute(f"CREATE POLICY tenant_update ON {table} FOR UPDATE USING {scope} WITH CHECK {scope}")
        op.execute(f"CREATE POLICY tenant_delete ON {table} FOR DELETE USING {scope}")
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("email_suppressions")
    op.drop_index(op.f("ix_email_messages_state"), table_name="email_messages")
    op.drop_index(op.f("ix_email_messages_template"), table_name="email_messages")
    op.drop_index(op.f("ix_email_messages_tenant_id"), table_name="email_messages")
    op.drop_table("email_messages")

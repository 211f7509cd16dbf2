"""outbound webhooks: tenants' endpoints (signing secrets sealed) and the delivery log, isolated per tenant

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
TABLES = ("webhook_endpoints", "webhook_deliveries")


def _text(length: int):
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _ts(name: str, nullable: bool = True, now: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.text("now()") if now else None
    )


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("url", _text(2000), nullable=False),
        sa.Column("description", _text(500), nullable=True),
        sa.Column("event_types", JSONB(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_sealed", sa.LargeBinary(), nullable=True),
        _ts("previous_secret_expires_at"),
        _ts("failing_since"),
        sa.Column("disabled_reason", _text(500), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at", False, True),
        _ts("updated_at", False, True),
    )
    op.create_index("ix_webhook_endpoints_tenant_id", "webhook_endpoints", ["tenant_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", _text(100), nullable=False),
        sa.Column("workflow_id", _text(200), nullable=False),
        sa.Column("status", _text(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_response_body", _text(1024), nullable=True),
        sa.Column("last_error", _text(500), nullable=True),
        sa.Column("last_duration_ms", sa.Integer(), nullable=True),
        _ts("last_attempt_at"),
        _ts("next_attempt_at"),
        _ts("delivered_at"),
        _ts("created_at", False, True),
        _ts("updated_at", False, True),
        sa.UniqueConstraint("endpoint_id", "event_id", name="ux_webhook_deliveries_endpoint_event"),
    )
    op.create_index("ix_webhook_deliveries_tenant_id", "webhook_deliveries", ["tenant_id"])
    op.create_index("ix_webhook_deliveries_endpoint_created", "webhook_deliveries", ["endpoint_id", "created_at", "id"])
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        scope = f"(tenant_id = {TENANT})"
        op.execute(f"CREATE POLICY tenant_read ON {table} FOR SELECT USING {scope}")
        op.execute(f"CREATE POLICY tenant_insert ON {table} FOR INSERT WITH CHECK {scope}")
        op.execute(f"CREATE POLICY tenant_update ON {table} FOR UPDATE USING {scope} WITH CHECK {scope}")
        op.execute(f"CREATE POLICY tenant_delete ON {table} FOR DELETE USING {scope}")
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)

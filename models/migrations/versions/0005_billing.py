"""subscriptions, invoices and per-tenant invoice numbering, isolated per tenant; tenants may be suspended

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
TABLES = ("subscriptions", "invoices", "invoice_counters")


def _text(length: int):
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _ts(name: str, nullable: bool = True, now: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.text("now()") if now else None
    )


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("plan_id", _text(40), nullable=False),
        sa.Column("status", _text(20), nullable=False),
        sa.Column("payment_method", _text(255), nullable=False),
        sa.Column("workflow_id", _text(200), nullable=False),
        _ts("current_period_start"),
        _ts("current_period_end"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("created_at", False, True),
        _ts("updated_at", False, True),
        _ts("canceled_at"),
    )
    op.create_index("ix_subscriptions_tenant_id", "subscriptions", ["tenant_id"])
    # One live subscription per tenant: a second POST is a 409, decided by the database, not by a race.
    op.execute(
        "CREATE UNIQUE INDEX ux_subscriptions_live ON subscriptions (tenant_id) "
        "WHERE status NOT IN ('canceled', 'unpaid')"
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("workflow_id", _text(200), nullable=False),
        sa.Column("kind", _text(20), nullable=False),
        sa.Column("period_index", sa.Integer(), nullable=False),
        _ts("period_start", False),
        _ts("period_end", False),
        sa.Column("plan_id", _text(40), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", _text(3), nullable=False),
        sa.Column("status", _text(20), nullable=False),
        sa.Column("payment_intent_id", _text(255), nullable=True),
        sa.Column("decline_code", _text(100), nullable=True),
        sa.Column("void_reason", _text(500), nullable=True),
        _ts("created_at", False, True),
        _ts("closed_at"),
        sa.UniqueConstraint("tenant_id", "number", name="ux_invoices_tenant_number"),
    )
    op.create_index("ix_invoices_tenant_id", "invoices", ["tenant_id"])
    op.create_index("ix_invoices_subscription_id", "invoices", ["subscription_id"])
    # The cycle's workflow id is the idempotency key of issuing; a voided invoice frees it for a re-run.
    op.execute("CREATE UNIQUE INDEX ux_invoices_workflow_live ON invoices (workflow_id) WHERE status <> 'void'")
    op.create_table(
        "invoice_counters",
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("last_number", sa.Integer(), nullable=False, server_default="0"),
    )
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

"""tenants, memberships, billing config, settings, invitations; row-level security; the application role

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"

# table -> (column holding the tenant, extra SELECT visibility)
POLICIES = {
    "tenants": ("id", f"id IN (SELECT tenant_id FROM memberships WHERE user_id = {USER})"),
    "memberships": ("tenant_id", f"user_id = {USER}"),
    "tenant_billing": ("tenant_id", None),
    "tenant_settings": ("tenant_id", None),
    "invitations": ("tenant_id", None),
}


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("slug", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("failure_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "memberships",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "user_id"),
    )
    op.create_index(op.f("ix_memberships_user_id"), "memberships", ["user_id"], unique=False)
    op.create_table(
        "tenant_billing",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_customer_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("billing_email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("plan", sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("values", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=True),
        sa.Column("invited_by", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["invited_by"], ["users.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_invitations_tenant_id"), "invitations", ["tenant_id"], unique=False)

    for table, (column, also_visible) in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")  # the owner too
        visible = f"{column} = {TENANT}" + (f" OR {also_visible}" if also_visible else "")
        op.execute(f"CREATE POLICY tenant_read ON {table} FOR SELECT USING ({visible})")
        op.execute(f"CREATE POLICY tenant_insert ON {table} FOR INSERT WITH CHECK ({column} = {TENANT})")
        op.execute(
            f"CREATE POLICY tenant_update ON {table} FOR UPDATE USING ({column} = {TENANT}) "
            f"WITH CHECK ({column} = {TENANT})"
        )
        op.execute(f"CREATE POLICY tenant_delete ON {table} FOR DELETE USING ({column} = {TENANT})")

    # Events: platform-wide ones (tenant_id NULL) and the current tenant's.
    op.execute("ALTER TABLE domain_events ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE domain_events FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_read ON domain_events FOR SELECT USING (tenant_id IS NULL OR tenant_id = {TENANT})"
    )
    op.execute(
        f"CREATE POLICY tenant_insert ON domain_events FOR INSERT "
        f"WITH CHECK (tenant_id IS NULL OR tenant_id = {TENANT})"
    )

    # The application role: owns no table, cannot bypass RLS. LOGIN and its password are the operator's
    # business (the embedded stack grants LOGIN on a trusted unix socket; deploy/postgres/init-roles.sql creates
    # it with a password). A migrating role without CREATEROLE (a managed database's owner) needs it to exist.
    op.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
                    RAISE EXCEPTION 'role {APP_ROLE} is missing: create it (LOGIN, NOBYPASSRLS) before migrating'
                        USING HINT = 'the migrating role ' || current_user || ' lacks CREATEROLE; '
                                     'deploy/postgres/init-roles.sql creates both roles as a superuser';
                END IF;
                CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
            ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}' AND (rolsuper OR rolbypassrls)) THEN
                RAISE EXCEPTION 'role {APP_ROLE} must not bypass row-level security: '
                                'ALTER ROLE {APP_ROLE} NOSUPERUSER NOBYPASSRLS, then migrate again';
            END IF;
        END $$""")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON users, verification_tokens, {', '.join(POLICIES)} TO {APP_ROLE}"
    )
    op.execute(f"GRANT SELECT, INSERT ON domain_events TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    for policy in ("tenant_read", "tenant_insert"):
        op.execute(f"DROP POLICY IF EXISTS {policy} ON domain_events")
    op.execute("ALTER TABLE domain_events NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE domain_events DISABLE ROW LEVEL SECURITY")
    op.drop_index(op.f("ix_invitations_tenant_id"), table_name="invitations")
    op.drop_table("invitations")
    op.drop_table("tenant_settings")
    op.drop_table("tenant_billing")
    op.drop_index(op.f("ix_memberships_user_id"), table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("tenants")

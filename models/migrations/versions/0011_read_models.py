"""CQRS read models built by the projector from the event stream: tenant overview and user profile, plus the
per-projection record of applied events (idempotency by event id)

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
# The projector and `prognet events replay` write as platform work (models.db.transaction(platform=True)).
PLATFORM = "coalesce(current_setting('app.platform', true), '') = 'on'"

# table -> who may read it besides platform work (writes: platform work only)
POLICIES = {
    # as the tenants table: also every tenant the caller is a member of (their tenant list)
    "rm_tenant_overview": f"tenant_id = {TENANT} OR tenant_id IN "
    f"(SELECT tenant_id FROM memberships WHERE user_id = {USER})",
    "rm_tenant_member": f"tenant_id = {TENANT}",
    "rm_tenant_dead_letter": f"tenant_id = {TENANT}",
    "rm_user_profile": f"user_id = {USER}",
    "rm_user_membership": f"user_id = {USER} OR tenant_id = {TENANT}",
}


def upgrade() -> None:
    op.execute("""
        CREATE TABLE rm_applied (
            projection varchar(50) NOT NULL,
            event_id uuid NOT NULL,
            seq bigint NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (projection, event_id)
        )""")
    op.execute("CREATE INDEX ix_rm_applied_seq ON rm_applied (projection, seq)")
    op.execute("""
        CREATE TABLE rm_tenant_overview (
            tenant_id uuid PRIMARY KEY,
            name varchar(200),
            slug varchar(40),
            status varchar(20) NOT NULL,
            failure_reason varchar(500),
            created_by uuid,
            created_at timestamptz,
            activated_at timestamptz,
            currency varchar(3),
            billing_email varchar(320),
            stripe_customer_id varchar(100),
            member_count integer NOT NULL DEFAULT 0,
            subscription_id uuid,
            plan varchar(40),
            subscription_status varchar(20),
            last_invoice_id uuid,
            last_invoice_number integer,
            last_invoice_amount integer,
            last_invoice_currency varchar(3),
            last_invoice_status varchar(20),
            open_dead_letters integer NOT NULL DEFAULT 0,
            last_seq bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE rm_tenant_member (
            tenant_id uuid NOT NULL, user_id uuid NOT NULL, role varchar(20) NOT NULL,
            PRIMARY KEY (tenant_id, user_id)
        )""")
    op.execute("""
        CREATE TABLE rm_tenant_dead_letter (
            tenant_id uuid NOT NULL, message_id uuid NOT NULL, PRIMARY KEY (tenant_id, message_id)
        )""")
    op.execute("""
        CREATE TABLE rm_user_profile (
            user_id uuid PRIMARY KEY,
            email varchar(320) NOT NULL,
            display_name varchar(200),
            status varchar(20) NOT NULL,
            created_at timestamptz NOT NULL,
            verified_at timestamptz,
            last_login_at timestamptz,
            last_seq bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE rm_user_membership (
            user_id uuid NOT NULL, tenant_id uuid NOT NULL, role varchar(20) NOT NULL, joined_at timestamptz NOT NULL,
            PRIMARY KEY (user_id, tenant_id)
        )""")
    op.execute("CREATE INDEX ix_rm_user_membership_tenant ON rm_user_membership (tenant_id)")
    for table, readers in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY rm_read ON {table} FOR SELECT USING ({readers} OR {PLATFORM})")
        op.execute(f"CREATE POLICY rm_write ON {table} FOR ALL USING ({PLATFORM}) WITH CHECK ({PLATFORM})")
    # A rebuild reads the whole log (every tenant's events) as platform work; other readers keep their policy.
    op.execute(f"CREATE POLICY projection_replay_read ON domain_events FOR SELECT USING ({PLATFORM})")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON rm_applied, {', '.join(POLICIES)} TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP POLICY IF EXISTS projection_replay_read ON domain_events")
    for table in (*POLICIES, "rm_applied"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

"""a failed tenant no longer holds its slug

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("tenants_slug_key", "tenants", type_="unique")
    op.execute("CREATE UNIQUE INDEX ux_tenants_slug_live ON tenants (slug) WHERE status <> 'failed'")


def downgrade() -> None:
    op.execute("DROP INDEX ux_tenants_slug_live")
    op.create_unique_constraint("tenants_slug_key", "tenants", ["slug"])

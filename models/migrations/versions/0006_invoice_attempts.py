"""an open invoice says why it is not paid yet: its charge attempts and when the next one is due

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # New columns on a table whose row-level security (forced) and grants 0005 set: both cover them as they are.
    op.add_column("invoices", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("invoices", sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("invoices", "next_retry_at")
    op.drop_column("invoices", "attempts")

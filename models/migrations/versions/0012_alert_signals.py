"""alert signals: per-minute counts of event types (login failures, payment declines) read by an index

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The evaluator counts each watched type's events of the last minute, every minute: without this it would
    # read every event of the type ever recorded (ix_domain_events_type) to keep the last minute's.
    op.create_index("ix_domain_events_type_occurred_at", "domain_events", ["type", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_domain_events_type_occurred_at", table_name="domain_events")

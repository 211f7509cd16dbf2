"""domain_events becomes the outbox: the transaction id that wrote each event (the relay's commit-order barrier),
a schema version, the acting user and the user an event concerns

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # xid8 of the writing transaction: an event is safe to publish once no transaction that started before it
    # is still running (pg_snapshot_xmin), whatever order the bigserial ids were handed out in.
    op.execute("ALTER TABLE domain_events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.add_column("domain_events", sa.Column("version", sa.SmallInteger(), nullable=False, server_default="1"))
    op.add_column("domain_events", sa.Column("actor_id", sa.Uuid(), nullable=True))
    op.add_column("domain_events", sa.Column("user_id", sa.Uuid(), nullable=True))
    op.create_index("ix_domain_events_txid", "domain_events", ["txid", "id"])
    op.create_index("ix_domain_events_user_id", "domain_events", ["user_id", "id"])
    # The append-only trigger refuses UPDATE: lift it for this one backfill, inside the migration's transaction.
    op.execute("ALTER TABLE domain_events DISABLE TRIGGER domain_events_append_only")
    op.execute("UPDATE domain_events SET user_id = aggregate_id::uuid WHERE aggregate_type = 'user'")
    op.execute("ALTER TABLE domain_events ENABLE TRIGGER domain_events_append_only")


def downgrade() -> None:
    op.drop_index("ix_domain_events_user_id", table_name="domain_events")
    op.drop_index("ix_domain_events_txid", table_name="domain_events")
    op.drop_column("domain_events", "user_id")
    op.drop_column("domain_events", "actor_id")
    op.drop_column("domain_events", "version")
    op.drop_column("domain_events", "txid")

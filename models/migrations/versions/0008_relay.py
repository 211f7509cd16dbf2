"""The outbox relay: its durable position, a read policy on domain_events for it, and a NOTIFY on every insert

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APP_ROLE = "prognet_app"
PLATFORM = "coalesce(current_setting('app.platform', true), '') = 'on'"
CHANNEL = "domain_events"  # relay.relay.CHANNEL


def upgrade() -> None:
    # (txid, seq) of the last event published to the stream named here: everything at or before it in
    # (txid, id) order is out. Moves forward (relay.relay.SAVE_POSITION), back only to republish what Redis lost.
    op.execute("""
        CREATE TABLE relay_position (
            name text PRIMARY KEY,
            txid xid8 NOT NULL DEFAULT '0',
            seq bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("INSERT INTO relay_position (name) VALUES ('events:all')")
    op.execute(f"GRANT SELECT, UPDATE ON relay_position TO {APP_ROLE}")

    # The relay reads every tenant's events; its session sets app.platform. Its own permissive policy, ORed
    # with tenant_read, so other migrations can change tenant_read without touching this one.
    op.execute(f"CREATE POLICY relay_read ON domain_events FOR SELECT USING ({PLATFORM})")

    # One notification per inserting statement, delivered at commit (never for a rollback): wakes the relay.
    op.execute(f"""
        CREATE FUNCTION domain_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$""")
    op.execute(
        "CREATE TRIGGER domain_events_notify AFTER INSERT ON domain_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION domain_events_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS domain_events_notify ON domain_events")
    op.execute("DROP FUNCTION IF EXISTS domain_events_notify()")
    op.execute("DROP POLICY IF EXISTS relay_read ON domain_events")
    op.execute("DROP TABLE IF EXISTS relay_position")

#!/bin/sh
# One-shot (temporalio/admin-tools): create Temporal's two databases if missing and bring their schemas to the
# version this admin-tools image ships. Idempotent; run it again after changing TEMPORAL_VERSION (the upgrade).
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
PORT="${DB_PORT:-5432}"
SCHEMA=/etc/temporal/schema/postgresql/v12

sql() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$PORT" -u "$POSTGRES_USER" "$@"; }

for pair in "temporal:temporal" "temporal_visibility:visibility"; do
  db="${pair%%:*}"
  dir="${pair##*:}"
  # `create` fails when the database exists: that is the normal case from the second run on
  sql --db "$db" create || echo "database $db exists"
  sql --db "$db" setup-schema -v 0.0   # only the version table on a new database; a no-op afterwards
  sql --db "$db" update-schema -d "$SCHEMA/$dir/versioned"
done
echo "Temporal schemas are up to date"

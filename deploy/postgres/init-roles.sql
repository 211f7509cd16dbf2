-- ProgNetwork's database and its two roles, run once by a superuser (psql 15 or newer).
--
-- docker-compose.yml mounts this file into the postgres image's /docker-entrypoint-initdb.d/, which runs it on
-- the first start of an empty data volume. On an existing server (or a managed one) run it yourself:
--   PROGNET_OWNER_DB_PASSWORD=… PROGNET_APP_DB_PASSWORD=… psql -v ON_ERROR_STOP=1 -U postgres -f init-roles.sql
-- It is idempotent: a second run keeps the data and resets the attributes and passwords.
--
--   prognet_owner  owns the database and every table; `prognet migrate` connects as it. No CREATEROLE, no
--                  CREATEDB, no BYPASSRLS: the tables FORCE row-level security, so the owner obeys it too.
--   prognet_app    what the API, the worker and the relay connect as: LOGIN, NOBYPASSRLS, owns nothing;
--                  the migrations grant it exactly the table privileges it needs.

\set ON_ERROR_STOP on
\getenv owner_password PROGNET_OWNER_DB_PASSWORD
\getenv app_password PROGNET_APP_DB_PASSWORD

\if :{?owner_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'PROGNET_OWNER_DB_PASSWORD is not set'; END $$;
\endif
\if :{?app_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'PROGNET_APP_DB_PASSWORD is not set'; END $$;
\endif

-- .env.example's placeholders (and anything short) are refused: a guessable database password is an open door.
SELECT length(:'owner_password') < 16 OR :'owner_password' ILIKE '%change-me%' AS weak_owner,
       length(:'app_password') < 16 OR :'app_password' ILIKE '%change-me%' AS weak_app \gset
\if :weak_owner
  DO $$ BEGIN RAISE EXCEPTION 'PROGNET_OWNER_DB_PASSWORD is a placeholder or shorter than 16 characters'; END $$;
\endif
\if :weak_app
  DO $$ BEGIN RAISE EXCEPTION 'PROGNET_APP_DB_PASSWORD is a placeholder or shorter than 16 characters'; END $$;
\endif

SELECT 'CREATE ROLE prognet_owner' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prognet_owner') \gexec
ALTER ROLE prognet_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'owner_password';

SELECT 'CREATE ROLE prognet_app' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prognet_app') \gexec
ALTER ROLE prognet_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';

SELECT 'CREATE DATABASE prognet OWNER prognet_owner'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prognet') \gexec
-- Only our two roles may connect; the application role may not create objects anywhere in it.
REVOKE ALL ON DATABASE prognet FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE prognet TO prognet_app;

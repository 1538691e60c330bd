-- Migration 4: producers need no rights on the tables. `push` runs with
-- its owner's (the host's) rights, with a fixed search path so a caller's
-- objects cannot stand in for the ones it names; no one may call it, or
-- `push_at`, unless granted (see docs/postgres.md):
--   GRANT USAGE ON SCHEMA taskhost TO app;
--   GRANT EXECUTE ON FUNCTION taskhost.push(text, bytea, text, interval) TO app;
ALTER FUNCTION @schema@.push(text, bytea, text, interval)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- `push_at` looks a taken key up by index even when the planner believes
-- the table small (see `enable_seqscan` in mod.rs).
ALTER FUNCTION @schema@.push_at(text, bytea, text, bigint, bigint)
    SET search_path = pg_catalog, pg_temp SET enable_seqscan = off;
REVOKE ALL ON FUNCTION @schema@.push(text, bytea, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @schema@.push_at(text, bytea, text, bigint, bigint) FROM PUBLIC;

-- Locks queue $1's capacity to the end of the transaction, so concurrent
-- bounded pushes cannot overshoot it.
SELECT pg_advisory_xact_lock(hashtext(@channel@ || ':' || $1))::text

-- Reclaims the leases of the gone hosts $1 (`gone_hosts.sql`): their
-- leased tasks are visible again at $2 (ms), the delivery counted as an
-- expiry would, and their nonce is cleared so the old holder can neither
-- renew nor settle them; their rows leave the registry (a host wrongly
-- taken for gone registers again with its next heartbeat); waiting hosts
-- are woken. Scans the table (no index on holder: a gone host is rare, and
-- one more index would cost every lease). Returns the tasks reclaimed.
WITH back AS (
    UPDATE @schema@.tasks t
    SET visible_at = $2::bigint, nonce = NULL, holder = NULL
    WHERE t.nonce IS NOT NULL AND t.holder = ANY($1::text[])
    RETURNING t.queue, cardinality(t.ids) - t.lo AS n
), dropped AS (
    DELETE FROM @schema@.hosts WHERE id = ANY($1::text[])
), woken AS (
    SELECT pg_notify(@channel@, q.queue) FROM (SELECT DISTINCT queue FROM back) q
)
SELECT (SELECT coalesce(sum(n), 0)::bigint FROM back), (SELECT count(*) FROM woken)

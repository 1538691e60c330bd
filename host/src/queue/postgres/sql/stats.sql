-- Counts of queue $1 by state at $2 (ms): pending (an expired lease is
-- pending again), delayed, leased, dead.
SELECT
    coalesce(sum(cardinality(ids) - lo) FILTER (WHERE visible_at <= $2), 0)::bigint,
    coalesce(sum(cardinality(ids) - lo) FILTER (WHERE visible_at > $2 AND nonce IS NULL), 0)::bigint,
    coalesce(sum(cardinality(ids) - lo) FILTER (WHERE visible_at > $2 AND nonce IS NOT NULL), 0)::bigint,
    (SELECT count(*) FROM @schema@.dead WHERE queue = $1)
FROM @schema@.tasks
WHERE queue = $1

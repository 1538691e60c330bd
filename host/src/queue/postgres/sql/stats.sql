-- Counts of queue $1 by state at $2 (ms): pending (an expired lease is
-- pending again), delayed, leased, dead.
SELECT
    count(*) FILTER (WHERE visible_at <= $2),
    count(*) FILTER (WHERE visible_at > $2 AND nonce IS NULL),
    count(*) FILTER (WHERE visible_at > $2 AND nonce IS NOT NULL),
    (SELECT count(*) FROM @schema@.dead WHERE queue = $1)
FROM @schema@.tasks
WHERE queue = $1

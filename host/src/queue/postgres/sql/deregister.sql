-- A clean stop: host $1 leaves the registry, and whatever it still holds
-- (a batch abandoned after the grace period) is visible again at $2 (ms)
-- instead of after its lease time. Returns the tasks given back.
WITH dropped AS (
    DELETE FROM @schema@.hosts WHERE id = $1::text
), back AS (
    UPDATE @schema@.tasks t
    SET visible_at = $2::bigint, nonce = NULL, holder = NULL
    WHERE t.nonce IS NOT NULL AND t.holder = $1::text
    RETURNING t.queue, cardinality(t.ids) - t.lo AS n
), woken AS (
    SELECT pg_notify(@channel@, q.queue) FROM (SELECT DISTINCT queue FROM back) q
)
SELECT (SELECT coalesce(sum(n), 0)::bigint FROM back), (SELECT count(*) FROM woken)

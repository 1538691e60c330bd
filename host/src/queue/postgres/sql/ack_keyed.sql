-- Deletes leased rows whose tasks were all acked, and frees their unique
-- keys (`ack.sql` is the same for rows without keys). $1 row ids, $2
-- their lease nonces (same positions), $3 queue. Returns the tasks
-- deleted.
-- Rows are found by `id = ANY($1)` on the primary key, never by a join
-- with the arrays: see "Plans" in mod.rs.
WITH gone AS (
    DELETE FROM @schema@.tasks t
    WHERE t.id = ANY($1::bigint[])
      AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
    RETURNING t.ids[t.lo + 1:] AS ids, t.keys[t.lo + 1:] AS keys
), freed AS (
    DELETE FROM @schema@.keys c
    WHERE c.queue = $3::text
      AND c.unique_key = ANY(ARRAY(SELECT k FROM gone, unnest(gone.keys) AS k WHERE k IS NOT NULL))
      AND c.task = ANY(ARRAY(SELECT i FROM gone, unnest(gone.ids) AS i))
)
SELECT coalesce(sum(cardinality(ids)), 0)::bigint FROM gone

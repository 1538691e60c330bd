-- Deletes leased rows whose tasks were all acked and none of which has a
-- unique key (`ack_keyed.sql` frees keys too). $1 row ids, $2 their lease
-- nonces (same positions). Returns the tasks deleted.
-- Rows are found by `id = ANY($1)` on the primary key, never by a join
-- with the arrays: see "Plans" in mod.rs.
WITH gone AS (
    DELETE FROM @schema@.tasks t
    WHERE t.id = ANY($1::bigint[])
      AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
    RETURNING cardinality(t.ids) - t.lo AS n
)
SELECT coalesce(sum(n), 0)::bigint FROM gone

-- Deletes acked tasks still held under these leases. $1 ids, $2 nonces,
-- $3 attempts (same positions). Affected rows = acks applied.
-- Rows are found by `id = ANY($1)` on the primary key, never by a join
-- with the arrays: see "Plans" in mod.rs.
DELETE FROM @schema@.tasks t
WHERE t.id = ANY($1::bigint[])
  AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
  AND t.attempt = ($3::integer[])[array_position($1::bigint[], t.id)]

-- Extends held, unexpired leases to $1 (ms). $2 ids, $3 nonces, $4
-- attempts (same positions), $5 now (ms). Affected rows = leases still held.
UPDATE @schema@.tasks t
SET visible_at = $1::bigint
WHERE t.id = ANY($2::bigint[])
  AND t.nonce = ($3::bigint[])[array_position($2::bigint[], t.id)]
  AND t.attempt = ($4::integer[])[array_position($2::bigint[], t.id)]
  AND t.visible_at > $5::bigint

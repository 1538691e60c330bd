-- Extends held, unexpired leases to $1 (ms). $2 row ids, $3 their lease
-- nonces (same positions), $4 now (ms). Returns the rows still held,
-- with their nonces.
UPDATE @schema@.tasks t
SET visible_at = $1::bigint
WHERE t.id = ANY($2::bigint[])
  AND t.nonce = ($3::bigint[])[array_position($2::bigint[], t.id)]
  AND t.visible_at > $4::bigint
RETURNING t.id, t.nonce

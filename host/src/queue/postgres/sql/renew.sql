-- Extends held, unexpired leases to $1 (ms). $2 ids, $3 nonces, $4
-- attempts, $5 now (ms). Affected rows = leases still held.
UPDATE @schema@.tasks t
SET visible_at = $1
FROM unnest($2::bigint[], $3::bigint[], $4::integer[]) AS s(id, nonce, attempt)
WHERE t.id = s.id AND t.nonce = s.nonce AND t.attempt = s.attempt AND t.visible_at > $5

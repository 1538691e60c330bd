-- Deletes acked tasks still held under these leases. $1 ids, $2 nonces,
-- $3 attempts. Affected rows = acks applied.
DELETE FROM @schema@.tasks t
USING unnest($1::bigint[], $2::bigint[], $3::integer[]) AS s(id, nonce, attempt)
WHERE t.id = s.id AND t.nonce = s.nonce AND t.attempt = s.attempt

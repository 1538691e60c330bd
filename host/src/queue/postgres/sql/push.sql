-- Pushes a batch in order. $1 queue, $2 payloads, $3 unique keys (NULL
-- for none), $4 visible-at per task (ms), $5 now (ms).
-- Returns (id, created) per task in input order.
SELECT r.id, r.created
FROM unnest($2::bytea[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(payload, unique_key, visible_at, n)
CROSS JOIN LATERAL @schema@.push_at($1, u.payload, u.unique_key, u.visible_at, $5) AS r
ORDER BY u.n

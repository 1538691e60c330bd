-- Makes held tasks visible again at their retry time. $1 ids, $2 nonces,
-- $3 attempts, $4 visible-at (ms) (same positions). Affected rows =
-- retries applied.
UPDATE @schema@.tasks t
SET visible_at = ($4::bigint[])[array_position($1::bigint[], t.id)], nonce = NULL, holder = NULL
WHERE t.id = ANY($1::bigint[])
  AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
  AND t.attempt = ($3::integer[])[array_position($1::bigint[], t.id)]

-- Makes held tasks visible again at their retry time. $1 ids, $2 nonces,
-- $3 attempts, $4 visible-at (ms). Affected rows = retries applied.
UPDATE @schema@.tasks t
SET visible_at = s.at, nonce = NULL, holder = NULL
FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::bigint[]) AS s(id, nonce, attempt, at)
WHERE t.id = s.id AND t.nonce = s.nonce AND t.attempt = s.attempt

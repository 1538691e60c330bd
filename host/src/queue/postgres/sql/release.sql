-- Gives held tasks back without counting the delivery, visible at once and
-- ahead of tasks pushed after them (visible from their push time). $1 ids,
-- $2 nonces, $3 attempts, $4 now (ms). Affected rows = releases applied.
UPDATE @schema@.tasks t
SET visible_at = LEAST(t.enqueued_at, $4), nonce = NULL, holder = NULL, attempt = t.attempt - 1
FROM unnest($1::bigint[], $2::bigint[], $3::integer[]) AS s(id, nonce, attempt)
WHERE t.id = s.id AND t.nonce = s.nonce AND t.attempt = s.attempt

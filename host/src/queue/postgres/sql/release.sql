-- Gives held tasks back without counting the delivery, visible at once and
-- ahead of tasks pushed after them (visible from their push time). $1 ids,
-- $2 nonces, $3 attempts (same positions), $4 now (ms). Affected rows =
-- releases applied.
UPDATE @schema@.tasks t
SET visible_at = LEAST(t.enqueued_at, $4::bigint), nonce = NULL, holder = NULL, attempt = t.attempt - 1
WHERE t.id = ANY($1::bigint[])
  AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
  AND t.attempt = ($3::integer[])[array_position($1::bigint[], t.id)]

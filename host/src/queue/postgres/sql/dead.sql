-- Moves held tasks to the dead letters. $1 ids, $2 nonces, $3 attempts,
-- $4 reasons, $5 now (ms). Affected rows = dead letters applied.
WITH gone AS (
    DELETE FROM @schema@.tasks t
    USING unnest($1::bigint[], $2::bigint[], $3::integer[], $4::text[]) AS s(id, nonce, attempt, reason)
    WHERE t.id = s.id AND t.nonce = s.nonce AND t.attempt = s.attempt
    RETURNING t.id, t.queue, t.payload, t.unique_key, t.attempt, t.enqueued_at, s.reason
)
INSERT INTO @schema@.dead (id, queue, payload, unique_key, attempt, enqueued_at, reason, failed_at)
SELECT id, queue, payload, unique_key, attempt, enqueued_at, reason, $5::bigint FROM gone ORDER BY id

-- Moves held tasks to the dead letters. $1 ids, $2 nonces, $3 attempts,
-- $4 reasons (same positions), $5 now (ms). Affected rows = dead letters
-- applied.
WITH gone AS (
    DELETE FROM @schema@.tasks t
    WHERE t.id = ANY($1::bigint[])
      AND t.nonce = ($2::bigint[])[array_position($1::bigint[], t.id)]
      AND t.attempt = ($3::integer[])[array_position($1::bigint[], t.id)]
    RETURNING t.id, t.queue, t.payload, t.unique_key, t.attempt, t.enqueued_at,
              ($4::text[])[array_position($1::bigint[], t.id)] AS reason
)
INSERT INTO @schema@.dead (id, queue, payload, unique_key, attempt, enqueued_at, reason, failed_at)
SELECT id, queue, payload, unique_key, attempt, enqueued_at, reason, $5::bigint FROM gone ORDER BY id

-- The newest $2 dead letters of queue $1, newest first.
SELECT id, unique_key, payload, attempt, enqueued_at, reason, failed_at
FROM @schema@.dead
WHERE queue = $1
ORDER BY seq DESC
LIMIT $2

-- Keeps only the newest $2 dead letters of queue $1.
DELETE FROM @schema@.dead
WHERE queue = $1 AND seq <= (
    SELECT seq FROM @schema@.dead WHERE queue = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1
)

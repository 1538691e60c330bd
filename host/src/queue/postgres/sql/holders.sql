-- The live tasks of queue $1 holding unique keys $2: (id, unique_key).
-- A keyed task has a row of its own.
SELECT ids[lo + 1], unique_key FROM @schema@.tasks WHERE queue = $1 AND unique_key = ANY($2::text[])

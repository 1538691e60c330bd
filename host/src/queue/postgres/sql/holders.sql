-- The live tasks of queue $1 holding unique keys $2: (id, unique_key).
SELECT task, unique_key FROM @schema@.keys WHERE queue = $1 AND unique_key = ANY($2::text[])

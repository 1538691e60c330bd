-- Pushes a batch in one statement. $1 queue, $2 payloads, $3 unique keys
-- (NULL for none), $4 visible-at per task (ms), $5 now (ms), $6 most
-- tasks per row.
-- Task ids ascend in input order. A keyed task first claims its key in
-- `keys`; one whose key a live task (or an earlier one of this batch)
-- holds is not inserted, and `push.rs` finds which task holds it. The
-- tasks inserted are stored in rows of up to $6 tasks due at the same
-- time, in input order. The queue's name is recorded, and the wake
-- channel notified once if a new task is ready now.
-- Returns (id, unique_key, notified) of each inserted task, by id.
WITH u AS (
    SELECT nextval('@schema@.task_ids') AS id, u.payload, u.unique_key, u.visible_at, u.n
    FROM unnest($2::bytea[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(payload, unique_key, visible_at, n)
), claimed AS (
    INSERT INTO @schema@.keys AS c (queue, unique_key, task)
    SELECT $1::text, u.unique_key, u.id FROM u WHERE u.unique_key IS NOT NULL ORDER BY u.n
    ON CONFLICT (queue, unique_key) DO NOTHING
    RETURNING c.task
), fresh AS (
    SELECT u.* FROM u WHERE u.unique_key IS NULL OR u.id IN (SELECT task FROM claimed)
), inserted AS (
    INSERT INTO @schema@.tasks (id, head, queue, ids, payloads, keys, enqueued_at, visible_at)
    SELECT min(fresh.id), min(fresh.id), $1::text, array_agg(fresh.id ORDER BY fresh.n),
           array_agg(fresh.payload ORDER BY fresh.n),
           CASE WHEN count(fresh.unique_key) = 0 THEN NULL
                ELSE array_agg(fresh.unique_key ORDER BY fresh.n) END,
           $5::bigint, fresh.visible_at
    FROM fresh
    GROUP BY fresh.visible_at, (fresh.n - 1) / $6::bigint
    RETURNING visible_at
), named AS (
    INSERT INTO @schema@.queues (name) VALUES ($1::text) ON CONFLICT DO NOTHING
), woken AS (
    SELECT pg_notify(@channel@, $1::text)
    WHERE EXISTS (SELECT 1 FROM inserted WHERE inserted.visible_at <= $5::bigint)
)
SELECT fresh.id, fresh.unique_key, (SELECT count(*) FROM woken) FROM fresh ORDER BY fresh.id

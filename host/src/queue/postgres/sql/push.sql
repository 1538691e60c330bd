-- Pushes a batch in one statement. $1 queue, $2 payloads, $3 unique keys
-- (NULL for none), $4 visible-at per task (ms), $5 now (ms), $6 most
-- tasks per row.
-- Task ids ascend in input order. Tasks without a key are stored in rows
-- of up to $6 tasks due at the same time, in input order; a keyed task
-- gets a row of its own, and is not inserted when a live task (or an
-- earlier one of this batch) holds its key: `push.rs` finds which task
-- holds it. The queue's name is recorded, and the wake channel notified
-- once if a new task is ready now.
-- Returns (id, unique_key, notified) of each inserted task, by id.
WITH u AS (
    SELECT nextval('@schema@.task_ids') AS id, u.payload, u.unique_key, u.visible_at, u.n
    FROM unnest($2::bytea[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(payload, unique_key, visible_at, n)
), keyed AS (
    INSERT INTO @schema@.tasks AS t (id, head, queue, ids, payloads, unique_key, enqueued_at, visible_at)
    SELECT u.id, u.id, $1::text, ARRAY[u.id], ARRAY[u.payload], u.unique_key, $5::bigint, u.visible_at
    FROM u WHERE u.unique_key IS NOT NULL
    ORDER BY u.n
    ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING t.id, t.unique_key, t.visible_at
), plain AS (
    INSERT INTO @schema@.tasks (id, head, queue, ids, payloads, enqueued_at, visible_at)
    SELECT min(u.id), min(u.id), $1::text, array_agg(u.id ORDER BY u.n), array_agg(u.payload ORDER BY u.n),
           $5::bigint, u.visible_at
    FROM u WHERE u.unique_key IS NULL
    GROUP BY u.visible_at, (u.n - 1) / $6::bigint
    RETURNING visible_at
), named AS (
    INSERT INTO @schema@.queues (name) VALUES ($1::text) ON CONFLICT DO NOTHING
), woken AS (
    SELECT pg_notify(@channel@, $1::text)
    WHERE EXISTS (SELECT 1 FROM keyed WHERE keyed.visible_at <= $5::bigint)
       OR EXISTS (SELECT 1 FROM plain WHERE plain.visible_at <= $5::bigint)
)
SELECT all_.id, all_.unique_key, (SELECT count(*) FROM woken)
FROM (
    SELECT keyed.id, keyed.unique_key FROM keyed
    UNION ALL
    SELECT u.id, NULL FROM u WHERE u.unique_key IS NULL
) all_
ORDER BY all_.id

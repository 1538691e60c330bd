-- Pushes a batch in one statement. $1 queue, $2 payloads, $3 unique keys
-- (NULL for none), $4 visible-at per task (ms), $5 now (ms).
-- Rows are inserted in input order, so the ids of the inserted tasks
-- ascend in it. A task whose unique key a live task (or an earlier one of
-- this batch) holds is not inserted; `push.rs` finds which task holds it.
-- The queue's name is recorded, and the wake channel notified once if a
-- new task is ready now.
-- Returns (id, unique_key) of each inserted task.
WITH ins AS (
    INSERT INTO @schema@.tasks AS t (queue, payload, unique_key, enqueued_at, visible_at)
    SELECT $1::text, u.payload, u.unique_key, $5::bigint, u.visible_at
    FROM unnest($2::bytea[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(payload, unique_key, visible_at, n)
    ORDER BY u.n
    ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING t.id, t.unique_key, t.visible_at
), named AS (
    INSERT INTO @schema@.queues (name) VALUES ($1::text) ON CONFLICT DO NOTHING
), woken AS (
    SELECT pg_notify(@channel@, $1::text)
    WHERE EXISTS (SELECT 1 FROM ins WHERE ins.visible_at <= $5::bigint)
)
SELECT ins.id, ins.unique_key, (SELECT count(*) FROM woken) FROM ins ORDER BY ins.id

-- Leases up to $3 due tasks of queue $1 (visible at $2 ms, expired leases
-- included), oldest first, from at most $7 rows, in one statement: rows
-- other hosts are leasing right now are skipped, not waited for. $4 lease
-- expiry (ms), $5 the lease's nonce, $6 holder.
-- Rows taken whole get the lease. Of the first row that holds more than
-- the lease still wants, the front is copied into a new leased row and
-- the row's `lo` moves past it (its arrays are not rewritten); its nonce
-- is cleared, so a holder whose lease on it expired cannot settle what is
-- left. Rows are found by their `ctid` (stable while this statement holds
-- their row locks): no index lookup, and no join of `tasks` whose plan
-- depends on the table's statistics (see "Plans" in mod.rs).
-- Returns per leased row: its id, task ids, payloads, unique keys (NULL
-- when none), attempt, enqueued_at, and its old visible_at (the order to hand them
-- out in).
WITH picked AS (
    SELECT ctid, id, head, ids, lo, attempt, enqueued_at, visible_at
    FROM @schema@.tasks
    WHERE queue = $1 AND visible_at <= $2
    ORDER BY visible_at, head
    LIMIT $7
    FOR NO KEY UPDATE SKIP LOCKED
), counted AS (
    SELECT p.*, cardinality(p.ids) - p.lo AS n,
           sum(cardinality(p.ids) - p.lo) OVER (ORDER BY p.visible_at, p.head ROWS UNBOUNDED PRECEDING) AS upto
    FROM picked p
), whole AS (
    UPDATE @schema@.tasks t
    SET attempt = t.attempt + 1, visible_at = $4, nonce = $5, holder = $6
    WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM counted WHERE upto <= $3))
    RETURNING t.id, t.ids[t.lo + 1:] AS ids, t.payloads[t.lo + 1:] AS payloads,
              t.keys[t.lo + 1:] AS keys, t.attempt, t.enqueued_at
), cut AS (
    SELECT c.ctid, c.id, c.ids, c.lo, c.attempt, c.enqueued_at, c.visible_at,
           ($3 - (c.upto - c.n))::integer AS take
    FROM counted c
    WHERE c.upto > $3 AND c.upto - c.n < $3
), rest AS (
    UPDATE @schema@.tasks t
    SET lo = t.lo + (SELECT take FROM cut), nonce = NULL, holder = NULL
    WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM cut))
    RETURNING t.ids[t.lo - (SELECT take FROM cut) + 1 : t.lo] AS ids,
              t.payloads[t.lo - (SELECT take FROM cut) + 1 : t.lo] AS payloads,
              t.keys[t.lo - (SELECT take FROM cut) + 1 : t.lo] AS keys
), piece AS (
    -- Only from a row `rest` did move on, so no task is ever in two rows.
    INSERT INTO @schema@.tasks AS t
        (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at, nonce, holder)
    SELECT nextval('@schema@.task_ids'), rest.ids[1], $1, rest.ids, rest.payloads, rest.keys,
           cut.attempt + 1, cut.enqueued_at, $4, $5, $6
    FROM rest, cut
    RETURNING t.id, t.ids, t.payloads, t.keys, t.attempt, t.enqueued_at
)
SELECT w.id, w.ids, w.payloads, w.keys, w.attempt, w.enqueued_at, c.visible_at
FROM whole w JOIN counted c ON c.id = w.id
UNION ALL
SELECT p.id, p.ids, p.payloads, p.keys, p.attempt, p.enqueued_at, cut.visible_at
FROM piece p, cut

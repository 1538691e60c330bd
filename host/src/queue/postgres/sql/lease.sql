-- Leases up to $3 due tasks of queue $1 (visible at $2 ms, expired leases
-- included), oldest first, in one statement: rows other hosts are leasing
-- right now are skipped, not waited for. $4 lease expiry (ms), $5 the
-- batch's nonce, $6 holder. Returns each task and its old visible_at (the
-- order to hand them out in). The update finds the picked rows by their
-- `ctid` (stable while this statement holds their row locks): no index
-- lookup, and no join whose plan depends on the table's statistics (see
-- "Plans" in mod.rs).
WITH picked AS (
    SELECT ctid, id, visible_at
    FROM @schema@.tasks
    WHERE queue = $1 AND visible_at <= $2
    ORDER BY visible_at, id
    LIMIT $3
    FOR NO KEY UPDATE SKIP LOCKED
), leased AS (
    UPDATE @schema@.tasks t
    SET attempt = t.attempt + 1, visible_at = $4, nonce = $5, holder = $6
    WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM picked))
    RETURNING t.id, t.unique_key, t.payload, t.attempt, t.enqueued_at
)
SELECT l.id, l.unique_key, l.payload, l.attempt, l.enqueued_at, p.visible_at
FROM leased l JOIN picked p ON p.id = l.id

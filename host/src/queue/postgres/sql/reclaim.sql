-- Reclaims the leases of gone hosts: those whose registration expired,
-- and $2 (hosts found gone otherwise: their run-file lock is free), never
-- $1 (this host, NULL before it registered). Their leased tasks are
-- visible again at $3 (ms), the delivery counted as an expiry would, and
-- their nonce is cleared so the old holder can neither renew nor settle
-- them; their rows leave the registry (a host wrongly taken for gone
-- registers again with its next heartbeat); waiting hosts are woken.
-- Returns (tasks reclaimed, gone host ids).
WITH gone AS (
    SELECT id FROM @schema@.hosts
    WHERE (expires_at <= now() OR id = ANY($2::text[])) AND id IS DISTINCT FROM $1::text
), back AS (
    UPDATE @schema@.tasks t
    SET visible_at = $3::bigint, nonce = NULL, holder = NULL
    FROM gone
    WHERE t.nonce IS NOT NULL AND t.holder = gone.id
    RETURNING t.queue
), dropped AS (
    DELETE FROM @schema@.hosts h USING gone WHERE h.id = gone.id RETURNING h.id
), woken AS (
    SELECT pg_notify(@channel@, q.queue) FROM (SELECT DISTINCT queue FROM back) q
)
SELECT (SELECT count(*) FROM back),
       (SELECT count(*) FROM woken),
       ARRAY(SELECT id FROM dropped ORDER BY id)

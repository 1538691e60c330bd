-- The gone hosts: those whose registration expired, and $2 (hosts found
-- gone otherwise: their run-file lock is free), never $1 (this host, NULL
-- before it registered).
SELECT id FROM @schema@.hosts
WHERE (expires_at <= now() OR id = ANY($2::text[])) AND id IS DISTINCT FROM $1::text

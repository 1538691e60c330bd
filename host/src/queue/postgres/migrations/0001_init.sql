-- Migration 1: the queue tables and the producer functions.
-- `@schema@` is replaced by the quoted schema name, `@channel@` by the
-- wake-up channel name as a string literal.

-- Live tasks only: pending, delayed and leased. Acked and dead-lettered
-- rows are deleted, so the table and its indexes stay as large as the
-- backlog. A row is leased while `nonce` is set; `visible_at` is then the
-- lease expiry, so an expired lease is simply visible again.
CREATE TABLE @schema@.tasks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue       text    NOT NULL,
    payload     bytea   NOT NULL,
    unique_key  text,
    -- Deliveries so far; the lease that hands a task out increments it.
    attempt     integer NOT NULL DEFAULT 0,
    enqueued_at bigint  NOT NULL, -- ms since the Unix epoch
    visible_at  bigint  NOT NULL, -- ms; when pending, delayed or the lease ends
    nonce       bigint,           -- random per lease batch: proves the holder
    holder      text              -- which host holds the lease, for people
);

-- What a lease scans: due tasks of one queue, oldest first.
CREATE INDEX tasks_due ON @schema@.tasks (queue, visible_at, id);

-- Unique keys over live tasks: once a task is acked or dead its row is
-- gone and the key is free.
CREATE UNIQUE INDEX tasks_unique_key ON @schema@.tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL;

-- Dead letters, newest = highest seq; trimmed per queue on every insert.
CREATE TABLE @schema@.dead (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          bigint  NOT NULL,
    queue       text    NOT NULL,
    payload     bytea   NOT NULL,
    unique_key  text,
    attempt     integer NOT NULL,
    enqueued_at bigint  NOT NULL,
    reason      text    NOT NULL,
    failed_at   bigint  NOT NULL
);
CREATE INDEX dead_by_queue ON @schema@.dead (queue, seq);

-- Names of queues ever pushed to (for `host status`).
CREATE TABLE @schema@.queues (name text PRIMARY KEY);

-- Pushes one task at the caller's times (ms): returns its id and whether
-- it was created, or the id of the live task holding `unique_key`. The
-- host calls it with its own clock; producers call `push` below.
CREATE FUNCTION @schema@.push_at(
    q text, p bytea, k text, visible bigint, now_ms bigint,
    OUT id bigint, OUT created boolean
) LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO @schema@.queues (name) VALUES (q) ON CONFLICT DO NOTHING;
    LOOP
        INSERT INTO @schema@.tasks AS t (queue, payload, unique_key, enqueued_at, visible_at)
        VALUES (q, p, k, now_ms, visible)
        ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING t.id INTO id;
        IF FOUND THEN
            created := true;
            IF visible <= now_ms THEN
                -- One notification per queue and transaction: Postgres
                -- folds identical ones.
                PERFORM pg_notify(@channel@, q);
            END IF;
            RETURN;
        END IF;
        SELECT t.id INTO id FROM @schema@.tasks t WHERE t.queue = q AND t.unique_key = k;
        IF FOUND THEN
            created := false;
            RETURN;
        END IF;
        -- The holder of the key settled it between the two statements: try again.
    END LOOP;
END
$fn$;

-- Transactional enqueue for producers: call it inside your own
-- transaction, and the task exists if and only if that transaction commits.
-- Returns the task id (or the live duplicate's id for a taken unique key).
CREATE FUNCTION @schema@.push(
    queue text, payload bytea, unique_key text DEFAULT NULL, delay interval DEFAULT NULL
) RETURNS bigint LANGUAGE sql AS $fn$
    SELECT (@schema@.push_at(
        queue, payload, unique_key,
        (extract(epoch FROM now() + coalesce(delay, interval '0')) * 1000)::bigint,
        (extract(epoch FROM now()) * 1000)::bigint
    )).id
$fn$;

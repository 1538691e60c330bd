-- Migration 5: a row of `tasks` holds a run of tasks, not one.
--
-- One row per task cost Postgres about 45 us of CPU per task (a heap
-- tuple, two index entries, a row lock and a new row version each, all
-- in the WAL), which capped one host near 33,000 tasks/s. A row now
-- holds up to `tasks_per_row` tasks pushed together (their ids and
-- payloads as arrays), and a lease, a renewal and an ack each touch one
-- row per run. Unique keys move to a table of their own, `keys`, one row
-- per live task that holds one: a push claims the key there first (so a
-- taken key is refused as before), and whatever ends a task (ack, dead
-- letter, cancel) frees its key in the same statement.
--
-- `ids[lo+1:]`, `payloads[lo+1:]` and `keys[lo+1:]` (NULL when no task
-- of the row has a key) are the row's live tasks: a lease
-- that takes the front of a row copies those tasks into a leased row of
-- their own and moves `lo` past them, so the rest of the row (its TOAST
-- data) is not written again. `head` is the first task id the row had,
-- the order among rows due at the same time; `id` names the row.

ALTER TABLE @schema@.tasks RENAME TO tasks_v4;
ALTER INDEX @schema@.tasks_pkey RENAME TO tasks_v4_pkey;
ALTER INDEX @schema@.tasks_due RENAME TO tasks_v4_due;
ALTER INDEX @schema@.tasks_unique_key RENAME TO tasks_v4_unique_key;

-- Task ids and row ids, from one sequence so neither ever repeats.
CREATE SEQUENCE @schema@.task_ids;
SELECT setval(
    '@schema@.task_ids',
    greatest(
        (SELECT max(id) FROM @schema@.tasks_v4),
        (SELECT max(id) FROM @schema@.dead),
        1
    )
);

CREATE TABLE @schema@.tasks (
    id          bigint  PRIMARY KEY,
    head        bigint  NOT NULL,
    queue       text    NOT NULL,
    ids         bigint[] NOT NULL,
    payloads    bytea[] NOT NULL,
    lo          integer NOT NULL DEFAULT 0,
    -- Each task's unique key or NULL; NULL when none has one.
    keys        text[],
    -- Deliveries so far, of every task of the row.
    attempt     integer NOT NULL DEFAULT 0,
    enqueued_at bigint  NOT NULL, -- ms since the Unix epoch
    visible_at  bigint  NOT NULL, -- ms; when pending, delayed or the lease ends
    nonce       bigint,           -- random per lease: proves the holder
    holder      text              -- which host holds the lease, for people
);
CREATE INDEX tasks_due ON @schema@.tasks (queue, visible_at, head);

-- The unique keys of live tasks: a key is taken while its task lives.
CREATE TABLE @schema@.keys (
    queue      text   NOT NULL,
    unique_key text   NOT NULL,
    task       bigint NOT NULL,
    PRIMARY KEY (queue, unique_key)
);

INSERT INTO @schema@.tasks
    (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at, nonce, holder)
SELECT id, id, queue, ARRAY[id], ARRAY[payload],
       CASE WHEN unique_key IS NULL THEN NULL ELSE ARRAY[unique_key] END,
       attempt, enqueued_at, visible_at, nonce, holder
FROM @schema@.tasks_v4;
INSERT INTO @schema@.keys (queue, unique_key, task)
SELECT queue, unique_key, id FROM @schema@.tasks_v4 WHERE unique_key IS NOT NULL;
DROP TABLE @schema@.tasks_v4;

-- Same signature, so grants and `push` stay as they were.
CREATE OR REPLACE FUNCTION @schema@.push_at(
    q text, p bytea, k text, visible bigint, now_ms bigint,
    OUT id bigint, OUT created boolean
) LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
AS $fn$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO @schema@.queues (name) VALUES (q) ON CONFLICT DO NOTHING;
    LOOP
        new_id := nextval('@schema@.task_ids');
        IF k IS NOT NULL THEN
            INSERT INTO @schema@.keys AS c (queue, unique_key, task) VALUES (q, k, new_id)
            ON CONFLICT (queue, unique_key) DO NOTHING;
            IF NOT FOUND THEN
                SELECT c.task INTO id FROM @schema@.keys c WHERE c.queue = q AND c.unique_key = k;
                IF FOUND THEN
                    created := false;
                    RETURN;
                END IF;
                -- The holder of the key settled it between the two statements: try again.
                CONTINUE;
            END IF;
        END IF;
        INSERT INTO @schema@.tasks (id, head, queue, ids, payloads, keys, enqueued_at, visible_at)
        VALUES (new_id, new_id, q, ARRAY[new_id], ARRAY[p],
                CASE WHEN k IS NULL THEN NULL ELSE ARRAY[k] END, now_ms, visible);
        id := new_id;
        created := true;
        IF visible <= now_ms THEN
            -- One notification per queue and transaction: Postgres
            -- folds identical ones.
            PERFORM pg_notify(@channel@, q);
        END IF;
        RETURN;
    END LOOP;
END
$fn$;

-- Settles tasks of leased rows in any mix of actions (the host deletes
-- rows whose tasks are all acked with `sql/ack.sql` instead). Per task,
-- same positions: `rows_` its row, `nonces` the lease nonce, `tids` the
-- task, `acts` one letter each in a string (a ack, r retry, l release,
-- d dead letter), `ats` the retry time (ms), `reasons` the dead letter's
-- reason. A task is settled only while its row still carries the lease's
-- nonce. A row whose live tasks all go one way is changed in place;
-- otherwise its retried tasks get rows of their own, its released tasks
-- one row together, and the tasks not named stay leased in the row.
-- Acked and dead-lettered tasks free their unique keys.
CREATE FUNCTION @schema@.settle(
    q text, rows_ bigint[], nonces bigint[], tids bigint[], acts text,
    ats bigint[], reasons text[], now_ms bigint,
    OUT applied bigint, OUT released bigint, OUT dead bigint
) LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
AS $fn$
DECLARE
    r record;
    j integer;
    i integer;
    act text;
    keep_i bigint[]; keep_p bytea[]; keep_k text[];
    ret_i bigint[]; ret_p bytea[]; ret_k text[]; ret_at bigint[];
    rel_i bigint[]; rel_p bytea[]; rel_k text[];
    dead_i bigint[]; dead_p bytea[]; dead_k text[]; dead_r text[];
    ended_i bigint[]; ended_k text[];
    acked integer;
    live integer;
    new_id bigint;
BEGIN
    applied := 0; released := 0; dead := 0;
    FOR r IN
        SELECT t.id, t.ids, t.payloads, t.keys, t.lo, t.attempt, t.enqueued_at, t.nonce
        FROM @schema@.tasks t
        WHERE t.id = ANY(rows_) AND t.queue = q AND t.nonce IS NOT NULL
        ORDER BY t.id
        FOR UPDATE
    LOOP
        keep_i := '{}'; keep_p := '{}'; keep_k := '{}';
        ret_i := '{}'; ret_p := '{}'; ret_k := '{}'; ret_at := '{}';
        rel_i := '{}'; rel_p := '{}'; rel_k := '{}';
        dead_i := '{}'; dead_p := '{}'; dead_k := '{}'; dead_r := '{}';
        ended_i := '{}'; ended_k := '{}';
        acked := 0;
        live := cardinality(r.ids) - r.lo;
        FOR j IN r.lo + 1 .. cardinality(r.ids) LOOP
            -- This task's settlement under this row's lease, if any.
            i := array_position(tids, r.ids[j]);
            WHILE i IS NOT NULL AND (rows_[i] <> r.id OR nonces[i] <> r.nonce) LOOP
                i := array_position(tids, r.ids[j], i + 1);
            END LOOP;
            act := CASE WHEN i IS NULL THEN 'k' ELSE substr(acts, i, 1) END;
            IF act = 'a' OR act = 'd' THEN
                IF r.keys[j] IS NOT NULL THEN
                    ended_i := ended_i || r.ids[j]; ended_k := ended_k || r.keys[j];
                END IF;
            END IF;
            IF act = 'a' THEN
                acked := acked + 1;
            ELSIF act = 'r' THEN
                ret_i := ret_i || r.ids[j]; ret_p := ret_p || r.payloads[j];
                ret_k := ret_k || r.keys[j]; ret_at := ret_at || ats[i];
            ELSIF act = 'l' THEN
                rel_i := rel_i || r.ids[j]; rel_p := rel_p || r.payloads[j];
                rel_k := rel_k || r.keys[j];
            ELSIF act = 'd' THEN
                dead_i := dead_i || r.ids[j]; dead_p := dead_p || r.payloads[j];
                dead_k := dead_k || r.keys[j]; dead_r := dead_r || reasons[i];
            ELSE
                keep_i := keep_i || r.ids[j]; keep_p := keep_p || r.payloads[j];
                keep_k := keep_k || r.keys[j];
            END IF;
        END LOOP;
        applied := applied + acked + cardinality(ret_i) + cardinality(rel_i) + cardinality(dead_i);
        released := released + cardinality(rel_i);
        dead := dead + cardinality(dead_i);
        IF cardinality(ended_i) > 0 THEN
            DELETE FROM @schema@.keys c
            WHERE c.queue = q AND c.unique_key = ANY(ended_k) AND c.task = ANY(ended_i);
        END IF;
        FOR j IN 1 .. cardinality(dead_i) LOOP
            INSERT INTO @schema@.dead
                (id, queue, payload, unique_key, attempt, enqueued_at, reason, failed_at)
            VALUES (dead_i[j], q, dead_p[j], dead_k[j], r.attempt, r.enqueued_at,
                    dead_r[j], now_ms);
        END LOOP;
        IF cardinality(rel_i) = live THEN
            -- Back at once, ahead of tasks pushed after them, the
            -- delivery not counted.
            UPDATE @schema@.tasks t
            SET visible_at = LEAST(t.enqueued_at, now_ms), nonce = NULL, holder = NULL,
                attempt = t.attempt - 1
            WHERE t.id = r.id;
            CONTINUE;
        END IF;
        IF cardinality(ret_i) = live
           AND NOT EXISTS (SELECT 1 FROM unnest(ret_at) a WHERE a <> ret_at[1]) THEN
            UPDATE @schema@.tasks t
            SET visible_at = ret_at[1], nonce = NULL, holder = NULL
            WHERE t.id = r.id;
            CONTINUE;
        END IF;
        IF cardinality(keep_i) = 0 THEN
            DELETE FROM @schema@.tasks t WHERE t.id = r.id;
        ELSIF cardinality(keep_i) < live THEN
            UPDATE @schema@.tasks t
            SET ids = keep_i, payloads = keep_p, lo = 0,
                keys = CASE WHEN cardinality(array_remove(keep_k, NULL)) = 0 THEN NULL ELSE keep_k END
            WHERE t.id = r.id;
        END IF;
        FOR j IN 1 .. cardinality(ret_i) LOOP
            new_id := nextval('@schema@.task_ids');
            INSERT INTO @schema@.tasks
                (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at)
            VALUES (new_id, ret_i[j], q, ARRAY[ret_i[j]], ARRAY[ret_p[j]],
                    CASE WHEN ret_k[j] IS NULL THEN NULL ELSE ARRAY[ret_k[j]] END,
                    r.attempt, r.enqueued_at, ret_at[j]);
        END LOOP;
        IF cardinality(rel_i) > 0 THEN
            new_id := nextval('@schema@.task_ids');
            INSERT INTO @schema@.tasks
                (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at)
            VALUES (new_id, rel_i[1], q, rel_i, rel_p,
                    CASE WHEN cardinality(array_remove(rel_k, NULL)) = 0 THEN NULL ELSE rel_k END,
                    r.attempt - 1, r.enqueued_at, LEAST(r.enqueued_at, now_ms));
        END IF;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION @schema@.settle(text, bigint[], bigint[], bigint[], text, bigint[], text[], bigint) FROM PUBLIC;

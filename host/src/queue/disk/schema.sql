-- The tables of a new store. A change here raises `LAYOUT` in sql.rs, with
-- the steps that bring older databases to it in `migrate`.
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    unique_key TEXT,
    payload BLOB NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    -- The host holding the lease (its number in `holders`), if it
    -- registered: a number keeps a leased row about as long as a waiting
    -- one, so leasing rewrites rows in place.
    holder INTEGER
);
-- Waiting tasks in the order they are leased (`visible_at`: when due).
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks(queue, visible_at, id) WHERE leased = 0;
-- Leased tasks by expiry (`visible_at`: when the lease ends), with their holder.
-- Two partial indexes: a lease moves a task from one to the other and an
-- ack deletes one entry, where one index over both (and one of holders)
-- cost an index entry moved and two more written and deleted.
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks(queue, visible_at, holder) WHERE leased = 1;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique ON tasks(queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    unique_key TEXT,
    payload BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    failed_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_queue ON dead(queue, id);
-- Newest first, for listing and trimming.
CREATE INDEX IF NOT EXISTS dead_newest ON dead(queue, failed_at, id);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
-- Queues an operator paused (host pause); hosts stop leasing from them.
CREATE TABLE IF NOT EXISTS paused (queue TEXT PRIMARY KEY) WITHOUT ROWID;
-- The registered hosts holding leases, by registry id.
CREATE TABLE IF NOT EXISTS holders (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);

//! The statements: each runs inside the writer's open transaction and
//! returns what its request answers.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock;
use crate::queue::{Action, DeadTask, Lease, NewTask, Pushed, QueueStats, Settle, Settled, Task};

/// A time or id as SQLite's integer, saturating.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The task in a row starting `id, unique_key, payload, attempt, enqueued_at`.
fn task(r: &rusqlite::Row<'_>, queue: &Arc<str>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: r.get::<_, i64>(0)? as u64,
        queue: queue.clone(),
        unique_key: r.get(1)?,
        payload: r.get(2)?,
        attempt: r.get(3)?,
        enqueued_at_ms: r.get::<_, i64>(4)? as u64,
    })
}

/// Inserts a batch, or `None` when it does not fit under `capacity`.
pub(super) fn push(
    c: &Connection,
    queue: &str,
    tasks: Vec<NewTask>,
    capacity: Option<usize>,
    now: u64,
) -> rusqlite::Result<Option<Vec<Pushed>>> {
    if let Some(cap) = capacity {
        let n: i64 = c
            .prepare_cached(
                "SELECT (SELECT count(*) FROM tasks WHERE queue = ?1 AND leased = 0) \
                      + (SELECT count(*) FROM tasks WHERE queue = ?1 AND leased = 1)",
            )?
            .query_row([queue], |r| r.get(0))?;
        if n as usize + tasks.len() > cap {
            return Ok(None);
        }
    }
    c.prepare_cached("INSERT OR IGNORE INTO queues (name) VALUES (?1)")?
        .execute([queue])?;
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO tasks (queue, unique_key, payload, enqueued_at, visible_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut find = c.prepare_cached("SELECT id FROM tasks WHERE queue = ?1 AND unique_key = ?2")?;
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let visible = clock::after(now, t.delay.unwrap_or_default());
        let n = insert.execute(params![
            queue,
            t.unique_key,
            t.payload,
            to_i64(now),
            to_i64(visible)
        ])?;
        if n == 1 {
            out.push(Pushed::Created(c.last_insert_rowid() as u64));
        } else {
            let id: i64 = find.query_row(params![queue, t.unique_key], |r| r.get(0))?;
            out.push(Pushed::Duplicate(id as u64));
        }
    }
    Ok(Some(out))
}

/// The layout `schema.sql` and [`migrate`] make, recorded in the
/// database's `user_version`: a change to either raises it.
const LAYOUT: i64 = 2;

/// Creates the tables of a new database, or brings an older version's up to
/// date; nothing to do (and nothing written) when it is current. One write
/// transaction: statements that each upgrade a read to a write fail with
/// "database is locked" when another process creating the same new store
/// commits between the two.
pub(super) fn create_or_migrate(c: &mut Connection, schema: &str) -> rusqlite::Result<()> {
    let layout = |c: &Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    if layout(c)? >= LAYOUT {
        return Ok(());
    }
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have done it while this one waited.
    let version = layout(&tx)?;
    if version < LAYOUT {
        add_missing_columns(&tx)?;
        tx.execute_batch(schema)?;
        migrate(&tx, version)?;
    }
    tx.commit()
}

/// Adds the columns a database made by an older version lacks (before the
/// schema, whose indexes name them); adding a column rewrites no row.
fn add_missing_columns(c: &Connection) -> rusqlite::Result<()> {
    let (columns, has_holder): (i64, bool) = c.query_row(
        "SELECT count(*), coalesce(sum(name = 'holder'), 0) FROM pragma_table_info('tasks')",
        [],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? > 0)),
    )?;
    if columns > 0 && !has_holder {
        c.execute_batch("ALTER TABLE tasks ADD COLUMN holder TEXT")?;
    }
    Ok(())
}

/// Brings the rows and indexes of a database at layout `version` up to
/// date, in place (after the schema).
fn migrate(c: &Connection, version: i64) -> rusqlite::Result<()> {
    if version < 1 {
        // Holders were names; they are numbers in `holders` now.
        c.execute_batch(
            "INSERT OR IGNORE INTO holders (name) \
               SELECT DISTINCT holder FROM tasks WHERE holder IS NOT NULL; \
             UPDATE tasks SET holder = (SELECT id FROM holders WHERE name = tasks.holder) \
               WHERE holder IS NOT NULL;",
        )?;
    }
    if version < 2 {
        // One index over waiting and leased tasks, and one of holders, gave
        // way to `tasks_waiting` and `tasks_leased` (made by the schema).
        c.execute_batch("DROP INDEX IF EXISTS tasks_visible; DROP INDEX IF EXISTS tasks_holder;")?;
    }
    c.execute_batch(&format!("PRAGMA user_version = {LAYOUT}"))
}

/// The number that stands for `holder` in `tasks`, made on first use.
fn holder_number(c: &Connection, holder: &str) -> rusqlite::Result<i64> {
    let found = c
        .prepare_cached("SELECT id FROM holders WHERE name = ?1")?
        .query_row([holder], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    c.prepare_cached("INSERT INTO holders (name) VALUES (?1)")?
        .execute([holder])?;
    Ok(c.last_insert_rowid())
}

/// Leases up to `max` visible tasks until `until`, oldest first, for `holder`.
pub(super) fn lease(
    c: &Connection,
    queue: &Arc<str>,
    max: usize,
    until: u64,
    now: u64,
    holder: Option<&str>,
) -> rusqlite::Result<Vec<Task>> {
    let holder = holder.map(|h| holder_number(c, h)).transpose()?;
    // Expired leases wait again, in their place (their expiry is old).
    c.prepare_cached(
        "UPDATE tasks INDEXED BY tasks_leased SET leased = 0, holder = NULL \
         WHERE queue = ?1 AND leased = 1 AND visible_at <= ?2",
    )?
    .execute(params![&**queue, to_i64(now)])?;
    // `INDEXED BY`: the hot path never falls back to a scan. `OR FAIL`: a
    // failing lease is rolled back whole by the writer, so SQLite need not
    // keep a statement journal of the rows it changed.
    let mut st = c.prepare_cached(
        "UPDATE OR FAIL tasks SET leased = 1, attempt = attempt + 1, visible_at = ?3, holder = ?5 \
         WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_waiting \
                      WHERE queue = ?1 AND leased = 0 AND visible_at <= ?2 \
                      ORDER BY visible_at, id LIMIT ?4) \
         RETURNING id, unique_key, payload, attempt, enqueued_at",
    )?;
    let mut out = st
        .query_map(
            params![&**queue, to_i64(now), to_i64(until), max as i64, holder],
            |r| task(r, queue),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Extends held leases to `until`; returns how many were held.
pub(super) fn renew(c: &Connection, leases: &[Lease], until: u64) -> rusqlite::Result<usize> {
    let mut st = c.prepare_cached(
        "UPDATE tasks SET visible_at = ?3 WHERE id = ?1 AND attempt = ?2 AND leased = 1",
    )?;
    let mut held = 0;
    for l in leases {
        held += st.execute(params![l.id as i64, l.attempt, to_i64(until)])?;
    }
    Ok(held)
}

/// Applies each settlement whose lease is still held, then trims the dead
/// letters of the queues it added to, keeping the newest `dead_capacity`.
pub(super) fn settle(
    c: &Connection,
    settlements: Vec<Settle>,
    dead_capacity: usize,
    now: u64,
) -> rusqlite::Result<Settled> {
    let (acks, others): (Vec<Settle>, Vec<Settle>) = settlements
        .into_iter()
        .partition(|s| matches!(s.action, Action::Ack));
    let mut out = ack(c, &acks)?;
    let mut died: Vec<String> = Vec::new();
    for s in others {
        let (id, attempt) = (s.lease.id as i64, s.lease.attempt);
        let n = match s.action {
            Action::Ack => 0,
            Action::RetryAt(at) => c
                .prepare_cached(
                    "UPDATE tasks SET leased = 0, holder = NULL, visible_at = ?3 \
                     WHERE id = ?1 AND attempt = ?2 AND leased = 1",
                )?
                .execute(params![id, attempt, to_i64(at)])?,
            // Back at its original place in line, this delivery not counted.
            Action::Release => c
                .prepare_cached(
                    "UPDATE tasks SET leased = 0, holder = NULL, attempt = attempt - 1, \
                     visible_at = min(enqueued_at, ?3) \
                     WHERE id = ?1 AND attempt = ?2 AND leased = 1",
                )?
                .execute(params![id, attempt, to_i64(now)])?,
            Action::DeadLetter(reason) => {
                let queue: Option<String> = c
                    .prepare_cached(
                        "INSERT OR REPLACE INTO dead \
                         (id, queue, unique_key, payload, attempt, enqueued_at, failed_at, reason) \
                         SELECT id, queue, unique_key, payload, attempt, enqueued_at, ?3, ?4 \
                         FROM tasks WHERE id = ?1 AND attempt = ?2 AND leased = 1 \
                         RETURNING queue",
                    )?
                    .query_row(params![id, attempt, to_i64(now), reason], |r| r.get(0))
                    .optional()?;
                match queue {
                    Some(q) => {
                        c.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
                            .execute([id])?;
                        if !died.contains(&q) {
                            died.push(q);
                        }
                        1
                    }
                    None => 0,
                }
            }
        };
        if n == 1 {
            out.applied += 1;
        } else {
            out.lost += 1;
        }
    }
    for q in died {
        // Walks the newest `dead_capacity` entries by index; runs only
        // when something died.
        c.prepare_cached(
            "DELETE FROM dead WHERE id IN (SELECT id FROM dead WHERE queue = ?1 \
             ORDER BY failed_at DESC, id DESC LIMIT -1 OFFSET ?2)",
        )?
        .execute(params![q, dead_capacity as i64])?;
    }
    Ok(out)
}

/// Deletes the acked tasks whose lease is still held. (One statement over
/// a JSON list of leases measured slower than this loop.)
fn ack(c: &Connection, acks: &[Settle]) -> rusqlite::Result<Settled> {
    let mut st =
        c.prepare_cached("DELETE FROM tasks WHERE id = ?1 AND attempt = ?2 AND leased = 1")?;
    let mut applied = 0;
    for s in acks {
        applied += st.execute(params![s.lease.id as i64, s.lease.attempt])?;
    }
    Ok(Settled {
        applied,
        lost: acks.len() - applied,
    })
}

/// Counts of a queue's tasks by state at `now`.
pub(super) fn stats(c: &Connection, queue: &str, now: u64) -> rusqlite::Result<QueueStats> {
    // Per index: due and not yet due, waiting (pending, delayed) and
    // leased (expired, so pending again; held).
    let count = |leased: &str| -> rusqlite::Result<(i64, i64)> {
        c.prepare_cached(&format!(
            "SELECT coalesce(sum(visible_at <= ?2), 0), coalesce(sum(visible_at > ?2), 0) \
             FROM tasks WHERE queue = ?1 AND leased = {leased}"
        ))?
        .query_row(params![queue, to_i64(now)], |r| Ok((r.get(0)?, r.get(1)?)))
    };
    let (due, delayed) = count("0")?;
    let (expired, leased) = count("1")?;
    let pending = due + expired;
    let dead: i64 = c
        .prepare_cached("SELECT count(*) FROM dead WHERE queue = ?1")?
        .query_row([queue], |r| r.get(0))?;
    Ok(QueueStats {
        pending: pending as u64,
        delayed: delayed as u64,
        leased: leased as u64,
        dead: dead as u64,
    })
}

/// True when the queue holds no pending, delayed or leased task: a probe
/// of each task index, however long the queue.
pub(super) fn empty(c: &Connection, queue: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT NOT EXISTS (SELECT 1 FROM tasks WHERE queue = ?1 AND leased = 0) \
            AND NOT EXISTS (SELECT 1 FROM tasks WHERE queue = ?1 AND leased = 1)",
    )?
    .query_row([queue], |r| r.get(0))
}

/// The newest dead letters of a queue.
pub(super) fn dead(
    c: &Connection,
    queue: &Arc<str>,
    limit: usize,
) -> rusqlite::Result<Vec<DeadTask>> {
    let mut st = c.prepare_cached(
        "SELECT id, unique_key, payload, attempt, enqueued_at, failed_at, reason \
         FROM dead WHERE queue = ?1 ORDER BY failed_at DESC, id DESC LIMIT ?2",
    )?;
    st.query_map(params![&**queue, limit as i64], |r| {
        Ok(DeadTask {
            task: task(r, queue)?,
            failed_at_ms: r.get::<_, i64>(5)? as u64,
            reason: r.get(6)?,
        })
    })?
    .collect()
}

/// Names of queues ever pushed to or holding dead letters.
pub(super) fn queues(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare_cached(
        "SELECT name FROM queues UNION SELECT DISTINCT queue FROM dead ORDER BY 1",
    )?;
    st.query_map([], |r| r.get(0))?.collect()
}

/// The hosts holding leases now (expired ones included). Forgets the
/// numbers of hosts that hold none: a host that leases again gets a new one.
pub(super) fn holders(c: &Connection) -> rusqlite::Result<Vec<String>> {
    // Only leased rows carry a holder: both read `tasks_leased` alone.
    c.prepare_cached(
        "DELETE FROM holders WHERE id NOT IN \
           (SELECT holder FROM tasks WHERE leased = 1 AND holder IS NOT NULL)",
    )?
    .execute([])?;
    let mut st = c.prepare_cached(
        "SELECT name FROM holders WHERE id IN \
           (SELECT holder FROM tasks WHERE leased = 1 AND holder IS NOT NULL)",
    )?;
    st.query_map([], |r| r.get(0))?.collect()
}

/// Makes the leases of gone `holders` visible now, as an expiry would
/// (the delivery stays counted), and takes them from their holder: with
/// `leased = 0` its renewals and settlements match no row. Returns how many
/// tasks came back.
pub(super) fn reclaim(c: &Connection, holders: &[String], now: u64) -> rusqlite::Result<u64> {
    let mut st = c.prepare_cached(
        "UPDATE tasks SET leased = 0, holder = NULL, visible_at = min(visible_at, ?2) \
         WHERE leased = 1 AND holder = (SELECT id FROM holders WHERE name = ?1)",
    )?;
    let mut n = 0;
    for h in holders {
        n += st.execute(params![h, to_i64(now)])? as u64;
    }
    Ok(n)
}

//! Operator actions on a [`DiskQueue`]: each one request to the writer
//! thread, so it commits with (and is ordered among) every other change.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{Finish, Request, finish};
use super::{DiskQueue, DiskStore};
use crate::queue::admin::{
    AdminError, DeadInfo, PeekPage, PeekedTask, QueueAdmin, TaskState, Which,
};
use crate::queue::{QueueError, TaskId};

/// A time or id as SQLite's integer, saturating.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DiskStore {
    /// Runs `f` on the writer thread inside its transaction; its changes are
    /// kept when it returns `Ok`.
    async fn job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, u64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.call(|reply| Request::Job {
            run: Box::new(move |conn, now| match conn {
                Ok(c) => {
                    let r = f(c, now);
                    let ok = r.is_ok();
                    (finish(reply, r), ok)
                }
                Err(msg) => {
                    let msg = msg.to_owned();
                    let f: Finish = Box::new(move |_: Option<&str>| drop(reply.send(Err(msg))));
                    (f, false)
                }
            }),
        })
        .await
    }
}

/// The `WHERE` clause of a live state at `?3` = now.
fn state_filter(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "visible_at <= ?3",
        TaskState::Delayed => "visible_at > ?3 AND leased = 0",
        TaskState::Leased => "visible_at > ?3 AND leased = 1",
        TaskState::Dead => "0",
    }
}

fn peek(
    c: &Connection,
    queue: &str,
    page: PeekPage,
    now: u64,
) -> rusqlite::Result<Vec<PeekedTask>> {
    let PeekPage {
        state,
        after,
        limit,
    } = page;
    // Ascending id from the cursor: a range read of the primary key (tasks)
    // or the (queue, id) index (dead), whatever the queue holds.
    if state == TaskState::Dead {
        let mut st = c.prepare_cached(
            "SELECT id, unique_key, payload, attempt, enqueued_at, failed_at, reason \
             FROM dead WHERE queue = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        return st
            .query_map(params![queue, to_i64(after), limit as i64], |r| {
                let dead = DeadInfo {
                    failed_at_ms: r.get::<_, i64>(5)? as u64,
                    reason: r.get(6)?,
                };
                peeked(r, None, Some(dead))
            })?
            .collect();
    }
    let sql = format!(
        "SELECT id, unique_key, payload, attempt, enqueued_at, visible_at \
         FROM tasks WHERE id > ?2 AND queue = ?1 AND {} ORDER BY id LIMIT ?4",
        state_filter(state)
    );
    let mut st = c.prepare_cached(&sql)?;
    st.query_map(
        params![queue, to_i64(after), to_i64(now), limit as i64],
        |r| peeked(r, Some(r.get::<_, i64>(5)? as u64), None),
    )?
    .collect()
}

/// A peeked task from a row whose first columns are `id, unique_key,
/// payload, attempt, enqueued_at` (both tables start alike).
fn peeked(
    r: &rusqlite::Row<'_>,
    at_ms: Option<u64>,
    dead: Option<DeadInfo>,
) -> rusqlite::Result<PeekedTask> {
    Ok(PeekedTask {
        id: r.get::<_, i64>(0)? as u64,
        unique_key: r.get(1)?,
        payload: r.get(2)?,
        attempt: r.get(3)?,
        enqueued_at_ms: r.get::<_, i64>(4)? as u64,
        at_ms,
        dead,
    })
}

/// The dead ids of `queue` that `which` names.
fn dead_ids(c: &Connection, queue: &str, which: &Which) -> rusqlite::Result<Vec<i64>> {
    match which {
        Which::All => c
            .prepare_cached("SELECT id FROM dead WHERE queue = ?1")?
            .query_map([queue], |r| r.get(0))?
            .collect(),
        Which::Ids(ids) => {
            let mut st = c.prepare_cached("SELECT id FROM dead WHERE queue = ?1 AND id = ?2")?;
            let mut out = Vec::new();
            for &id in ids {
                if let Some(id) = st
                    .query_row(params![queue, to_i64(id)], |r| r.get(0))
                    .optional()?
                {
                    out.push(id);
                }
            }
            Ok(out)
        }
    }
}

fn retry_dead(c: &Connection, queue: &str, which: &Which, now: u64) -> rusqlite::Result<u64> {
    // `OR IGNORE`: a dead letter whose unique key a live task holds stays dead.
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO tasks \
         (id, queue, unique_key, payload, attempt, enqueued_at, visible_at, leased) \
         SELECT id, queue, unique_key, payload, 0, enqueued_at, ?2, 0 FROM dead WHERE id = ?1",
    )?;
    let mut delete = c.prepare_cached("DELETE FROM dead WHERE id = ?1")?;
    let mut moved = 0;
    for id in dead_ids(c, queue, which)? {
        if insert.execute(params![id, to_i64(now)])? == 1 {
            delete.execute([id])?;
            moved += 1;
        }
    }
    Ok(moved)
}

fn purge_dead(c: &Connection, queue: &str, which: &Which) -> rusqlite::Result<u64> {
    match which {
        Which::All => Ok(c
            .prepare_cached("DELETE FROM dead WHERE queue = ?1")?
            .execute([queue])? as u64),
        Which::Ids(ids) => {
            let mut st = c.prepare_cached("DELETE FROM dead WHERE queue = ?1 AND id = ?2")?;
            let mut n = 0;
            for &id in ids {
                n += st.execute(params![queue, to_i64(id)])? as u64;
            }
            Ok(n)
        }
    }
}

/// Where a live task is: `None` when `queue` has no such task.
fn locate(
    c: &Connection,
    queue: &str,
    id: TaskId,
    now: u64,
) -> rusqlite::Result<Option<TaskState>> {
    c.prepare_cached("SELECT visible_at, leased FROM tasks WHERE id = ?1 AND queue = ?2")?
        .query_row(params![to_i64(id), queue], |r| {
            let (at, leased): (i64, bool) = (r.get(0)?, r.get(1)?);
            Ok(match (at as u64 > now, leased) {
                (false, _) => TaskState::Pending,
                (true, false) => TaskState::Delayed,
                (true, true) => TaskState::Leased,
            })
        })
        .optional()
}

impl DiskQueue {
    /// Looks task `id` up and, in the same job, runs `sql` on it (`?1` its
    /// id, `?2` now) when `applies` to its state; returns its state, `None`
    /// when the queue has no such live task.
    async fn on_task(
        &self,
        id: TaskId,
        applies: fn(TaskState) -> bool,
        sql: &'static str,
    ) -> Result<Option<TaskState>, QueueError> {
        let queue: Arc<str> = self.name.clone();
        self.store
            .job(move |c, now| {
                let at = locate(c, &queue, id, now)?;
                if at.is_some_and(applies) {
                    c.prepare_cached(sql)?
                        .execute(params![to_i64(id), to_i64(now)])?;
                }
                Ok(at)
            })
            .await
    }
}

#[async_trait]
impl QueueAdmin for DiskQueue {
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError> {
        let queue = self.name.clone();
        Ok(self
            .store
            .job(move |c, now| peek(c, &queue, page, now))
            .await?)
    }

    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError> {
        let queue = self.name.clone();
        let n = self
            .store
            .job(move |c, now| retry_dead(c, &queue, &which, now))
            .await?;
        if n > 0 {
            self.work.notify_one();
        }
        Ok(n)
    }

    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError> {
        let queue = self.name.clone();
        Ok(self
            .store
            .job(move |c, _| purge_dead(c, &queue, &which))
            .await?)
    }

    async fn cancel(&self, id: TaskId) -> Result<(), AdminError> {
        let cancel = "DELETE FROM tasks WHERE id = ?1 AND ?2 IS NOT NULL";
        match self
            .on_task(id, |at| at != TaskState::Leased, cancel)
            .await?
        {
            Some(TaskState::Leased) => Err(AdminError::leased(&self.name, id)),
            Some(_) => Ok(()),
            None => Err(AdminError::not_found(&self.name, id, "pending or delayed")),
        }
    }

    async fn run_now(&self, id: TaskId) -> Result<(), AdminError> {
        let run = "UPDATE tasks SET visible_at = ?2 WHERE id = ?1";
        match self.on_task(id, |at| at == TaskState::Delayed, run).await? {
            Some(TaskState::Leased) => Err(AdminError::leased(&self.name, id)),
            Some(TaskState::Delayed) => {
                self.work.notify_one();
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(AdminError::not_found(&self.name, id, "delayed")),
        }
    }

    async fn set_paused(&self, paused: bool) -> Result<(), AdminError> {
        let queue = self.name.clone();
        self.store
            .job(move |c, _| {
                let sql = if paused {
                    "INSERT OR IGNORE INTO paused (queue) VALUES (?1)"
                } else {
                    "DELETE FROM paused WHERE queue = ?1"
                };
                c.prepare_cached(sql)?.execute([&*queue])
            })
            .await?;
        if !paused {
            self.work.notify_waiters();
        }
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool, AdminError> {
        let queue = self.name.clone();
        Ok(self
            .store
            .job(move |c, _| {
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM paused WHERE queue = ?1)")?
                    .query_row([&*queue], |r| r.get(0))
            })
            .await?)
    }
}

//! Operator actions on a [`PostgresQueue`]: each one statement (or one
//! transaction); dead letters are paged by task id through `dead (queue,
//! id)` (migration 2), live tasks by the ids their rows hold.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::queue::PostgresQueue;
use super::{columns, fill};
use crate::queue::admin::{
    AdminError, DeadInfo, PeekPage, PeekedTask, QueueAdmin, TaskState, Which,
};
use crate::queue::{QueueError, TaskId};

/// Cuts element `$3` out of row `$1`'s arrays (the live ones from `lo`).
const CUT_OUT: &str = "UPDATE @schema@.tasks SET \
     ids = ids[lo + 1 : $3 - 1] || ids[$3 + 1 :], \
     payloads = payloads[lo + 1 : $3 - 1] || payloads[$3 + 1 :], \
     keys = keys[lo + 1 : $3 - 1] || keys[$3 + 1 :], \
     lo = 0 WHERE id = $1";

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The ids of `which` as the statements' array parameter (`NULL` = all).
fn ids(which: &Which) -> Option<Vec<i64>> {
    match which {
        Which::All => None,
        Which::Ids(ids) => Some(ids.iter().map(|&i| sql_i64(i)).collect()),
    }
}

/// A peeked row: `id, unique_key, payload, attempt, enqueued_at`, then
/// `visible_at` (live) or `reason, failed_at` (dead).
fn peeked(r: &Row, dead: bool) -> Result<PeekedTask, tokio_postgres::Error> {
    let attempt: i32 = r.try_get(3)?;
    Ok(PeekedTask {
        id: unsigned(r.try_get(0)?),
        unique_key: r.try_get(1)?,
        payload: r.try_get(2)?,
        attempt: u32::try_from(attempt).unwrap_or(0),
        enqueued_at_ms: unsigned(r.try_get(4)?),
        at_ms: if dead {
            None
        } else {
            Some(unsigned(r.try_get(5)?))
        },
        dead: if dead {
            Some(DeadInfo {
                reason: r.try_get(5)?,
                failed_at_ms: unsigned(r.try_get(6)?),
            })
        } else {
            None
        },
    })
}

impl PostgresQueue {
    fn sql(&self, sql: &str) -> String {
        fill(sql, &self.shared.opts.schema)
    }

    fn err(&self, e: tokio_postgres::Error) -> AdminError {
        AdminError::Queue(self.shared.pg_error(e))
    }

    /// Wakes idle hosts: tasks became visible here.
    async fn notify(&self) -> Result<(), QueueError> {
        let conn = self.shared.conn().await?;
        conn.query_one(&self.shared.sql.notify, &[&&*self.name])
            .await
            .map_err(|e| self.shared.pg_error(e))?;
        Ok(())
    }

    /// Looks task `id` up under a lock on its row and applies `change`
    /// to it when it is in a state `change` accepts; returns its state,
    /// `None` when the queue has no such live task. A task that shares
    /// its row leaves it: cancelled, it is cut out of the row; run now,
    /// it moves to a row of its own.
    async fn on_task(&self, id: TaskId, change: &str) -> Result<Option<TaskState>, AdminError> {
        let now = sql_i64(self.shared.clock.now_ms());
        let mut conn = self.shared.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        // The task's row: its ids ascend from `head`.
        let row = tx
            .query_opt(
                &self.sql(
                    "SELECT id, nonce IS NOT NULL, visible_at > $3, cardinality(ids) - lo, \
                     array_position(ids, $2, lo + 1) FROM @schema@.tasks \
                     WHERE queue = $1 AND head <= $2 AND $2 = ANY(ids[lo + 1:]) FOR UPDATE",
                ),
                &[&&*self.name, &sql_i64(id), &now],
            )
            .await
            .map_err(|e| self.err(e))?;
        let Some(r) = row else {
            return Ok(None);
        };
        let (row, leased, later, live, at): (i64, bool, bool, i32, i32) =
            columns(&r).map_err(|e| self.err(e))?;
        let state = match (leased, later) {
            (_, false) => TaskState::Pending,
            (false, true) => TaskState::Delayed,
            (true, true) => TaskState::Leased,
        };
        let applies = match change {
            "cancel" => state != TaskState::Leased,
            _ => state == TaskState::Delayed,
        };
        if applies {
            // The task leaves its row ($1), where it is element $3: a
            // cancel deletes the row of one or cuts the task out of the
            // row's arrays, and frees its key; run now makes a row of one
            // due at $2 or moves the task to a row of its own.
            let sql = match (change, live) {
                ("cancel", _) => format!(
                    "WITH was AS ( \
                         SELECT queue, ids[$3] AS tid, keys[$3] AS k, cardinality(ids) - lo AS live \
                         FROM @schema@.tasks WHERE id = $1 \
                     ), gone AS ( \
                         DELETE FROM @schema@.tasks WHERE id = $1 AND (SELECT live FROM was) = 1 \
                     ), cut AS ({CUT_OUT} AND (SELECT live FROM was) > 1) \
                     DELETE FROM @schema@.keys c USING was \
                     WHERE c.queue = was.queue AND c.unique_key = was.k AND c.task = was.tid \
                       AND $2::bigint IS NOT NULL"
                ),
                (_, 1) => "UPDATE @schema@.tasks SET visible_at = $2 WHERE id = $1 \
                           AND $3::integer IS NOT NULL"
                    .to_owned(),
                _ => format!(
                    "WITH moved AS ( \
                         SELECT ids[$3] AS tid, payloads[$3] AS payload, keys[$3] AS k, queue, \
                                attempt, enqueued_at \
                         FROM @schema@.tasks WHERE id = $1 \
                     ), cut AS ({CUT_OUT}) \
                     INSERT INTO @schema@.tasks \
                         (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at) \
                     SELECT nextval('@schema@.task_ids'), tid, queue, ARRAY[tid], ARRAY[payload], \
                            CASE WHEN k IS NULL THEN NULL ELSE ARRAY[k] END, \
                            attempt, enqueued_at, $2 FROM moved"
                ),
            };
            tx.execute(&self.sql(&sql), &[&row, &now, &at])
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Some(state))
    }
}

#[async_trait]
impl QueueAdmin for PostgresQueue {
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError> {
        let limit = page.limit as i64;
        let after = sql_i64(page.after);
        let now = sql_i64(self.shared.clock.now_ms());
        let conn = self.shared.conn().await?;
        let dead = page.state == TaskState::Dead;
        let rows = if dead {
            let sql = self.sql(
                "SELECT id, unique_key, payload, attempt, enqueued_at, reason, failed_at \
                 FROM @schema@.dead WHERE queue = $1 AND id > $2 ORDER BY id LIMIT $3",
            );
            conn.query(&sql, &[&&*self.name, &after, &limit]).await
        } else {
            let filter = match page.state {
                TaskState::Pending => "visible_at <= $3",
                TaskState::Delayed => "visible_at > $3 AND nonce IS NULL",
                _ => "visible_at > $3 AND nonce IS NOT NULL",
            };
            // The page's task ids first, then only their payloads.
            let sql = self.sql(&format!(
                "WITH page AS ( \
                     SELECT t.id AS row, u.id, u.n FROM @schema@.tasks t, \
                     unnest(t.ids) WITH ORDINALITY AS u(id, n) \
                     WHERE t.queue = $1 AND {filter} AND u.n > t.lo AND u.id > $2 \
                     ORDER BY u.id LIMIT $4 \
                 ) \
                 SELECT p.id, t.keys[p.n], t.payloads[p.n], t.attempt, t.enqueued_at, t.visible_at \
                 FROM page p JOIN @schema@.tasks t ON t.id = p.row ORDER BY p.id"
            ));
            conn.query(&sql, &[&&*self.name, &after, &now, &limit])
                .await
        }
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| peeked(r, dead))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError> {
        let now = sql_i64(self.shared.clock.now_ms());
        let conn = self.shared.conn().await?;
        // One statement, so atomic: a dead letter whose unique key a live
        // task holds stays dead; the others claim their keys again.
        let sql = self.sql(
            "WITH cand AS ( \
                SELECT d.seq, d.id, d.unique_key FROM @schema@.dead d WHERE d.queue = $1 \
                AND ($2::bigint[] IS NULL OR d.id = ANY($2)) \
             ), claimed AS ( \
                INSERT INTO @schema@.keys AS c (queue, unique_key, task) \
                SELECT $1, cand.unique_key, cand.id FROM cand WHERE cand.unique_key IS NOT NULL \
                ORDER BY cand.seq \
                ON CONFLICT (queue, unique_key) DO NOTHING RETURNING c.task \
             ), picked AS ( \
                DELETE FROM @schema@.dead d WHERE d.seq = ANY(ARRAY( \
                    SELECT seq FROM cand WHERE unique_key IS NULL \
                    OR id IN (SELECT task FROM claimed))) \
                RETURNING d.id, d.queue, d.payload, d.unique_key, d.enqueued_at) \
             INSERT INTO @schema@.tasks \
                 (id, head, queue, ids, payloads, keys, attempt, enqueued_at, visible_at) \
             SELECT nextval('@schema@.task_ids'), id, queue, ARRAY[id], ARRAY[payload], \
                    CASE WHEN unique_key IS NULL THEN NULL ELSE ARRAY[unique_key] END, \
                    0, enqueued_at, $3 FROM picked ORDER BY id",
        );
        let n = conn
            .execute(&sql, &[&&*self.name, &ids(&which), &now])
            .await
            .map_err(|e| self.err(e))?;
        if n > 0 {
            self.notify().await?;
        }
        Ok(n)
    }

    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError> {
        let conn = self.shared.conn().await?;
        let sql = self.sql(
            "DELETE FROM @schema@.dead WHERE queue = $1 AND ($2::bigint[] IS NULL OR id = ANY($2))",
        );
        conn.execute(&sql, &[&&*self.name, &ids(&which)])
            .await
            .map_err(|e| self.err(e))
    }

    async fn cancel(&self, id: TaskId) -> Result<(), AdminError> {
        match self.on_task(id, "cancel").await? {
            Some(TaskState::Leased) => Err(AdminError::leased(&self.name, id)),
            Some(_) => Ok(()),
            None => Err(AdminError::not_found(&self.name, id, "pending or delayed")),
        }
    }

    async fn run_now(&self, id: TaskId) -> Result<(), AdminError> {
        match self.on_task(id, "run").await? {
            Some(TaskState::Leased) => Err(AdminError::leased(&self.name, id)),
            Some(TaskState::Delayed) => Ok(self.notify().await?),
            Some(_) => Ok(()),
            None => Err(AdminError::not_found(&self.name, id, "delayed")),
        }
    }

    async fn set_paused(&self, paused: bool) -> Result<(), AdminError> {
        let conn = self.shared.conn().await?;
        let sql = if paused {
            "INSERT INTO @schema@.paused (queue) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM @schema@.paused WHERE queue = $1"
        };
        conn.execute(&self.sql(sql), &[&&*self.name])
            .await
            .map_err(|e| self.err(e))?;
        if !paused {
            self.notify().await?;
        }
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool, AdminError> {
        let conn = self.shared.conn().await?;
        let sql = self.sql("SELECT EXISTS (SELECT 1 FROM @schema@.paused WHERE queue = $1)");
        conn.query_one(&sql, &[&&*self.name])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(e))
    }
}

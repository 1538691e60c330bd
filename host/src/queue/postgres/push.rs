//! Pushing a batch: one set-based `INSERT` (`sql/push.sql`), then, for
//! tasks whose unique key was taken, the id of the task holding it.
//!
//! Without a capacity a push is that one statement, so one round trip and
//! atomic on its own; with one it runs in a transaction after the queue's
//! capacity lock and count.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use super::queue::{PostgresQueue, duration_ms, unsigned};
use crate::queue::{NewTask, Pushed, QueueError};

/// How often a push looks again for a key whose holder was settled between
/// the insert and the look-up (each round inserts or finds them anew).
const KEY_ROUNDS: usize = 100;

impl PostgresQueue {
    /// Pushes `tasks`; None when a bounded queue has no room for them.
    pub(super) async fn push_once(
        &self,
        tasks: &[NewTask],
    ) -> Result<Option<Vec<Pushed>>, QueueError> {
        let sh = &self.shared;
        let mut conn = sh.conn().await?;
        let Some(cap) = sh.opts.capacity else {
            return self.insert(&conn, tasks).await.map(Some);
        };
        let tx = conn.transaction().await.map_err(|e| sh.pg_error(e))?;
        tx.query_one(&sh.sql.lock, &[&&*self.name])
            .await
            .map_err(|e| sh.pg_error(e))?;
        let held: i64 = tx
            .query_one(&sh.sql.count, &[&&*self.name])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| sh.pg_error(e))?;
        if unsigned(held).saturating_add(tasks.len() as u64) > cap as u64 {
            return Ok(None);
        }
        let out = self.insert(&tx, tasks).await?;
        tx.commit().await.map_err(|e| sh.pg_error(e))?;
        Ok(Some(out))
    }

    /// Inserts `tasks` and resolves each taken unique key to its holder.
    async fn insert(
        &self,
        c: &impl GenericClient,
        tasks: &[NewTask],
    ) -> Result<Vec<Pushed>, QueueError> {
        let mut out: Vec<Option<Pushed>> = vec![None; tasks.len()];
        // Indexes of the tasks still to place; keys seen earlier in the
        // batch are duplicates of the first one's task.
        let mut todo: Vec<usize> = (0..tasks.len()).collect();
        for _ in 0..KEY_ROUNDS {
            let (created, plain) = self.insert_rows(c, tasks, &todo).await?;
            let mut plain = plain.into_iter();
            let mut firsts: HashMap<&str, u64> = HashMap::new();
            let mut taken = Vec::new();
            for &i in &todo {
                match tasks[i].unique_key.as_deref() {
                    None => {
                        let id = plain.next().ok_or_else(|| self.short())?;
                        out[i] = Some(Pushed::Created(id));
                    }
                    Some(k) => {
                        if let Some(&id) = firsts.get(k) {
                            out[i] = Some(Pushed::Duplicate(id));
                        } else if let Some(&id) = created.get(k) {
                            firsts.insert(k, id);
                            out[i] = Some(Pushed::Created(id));
                        } else {
                            taken.push(i);
                        }
                    }
                }
            }
            if taken.is_empty() {
                return out
                    .into_iter()
                    .map(|p| p.ok_or_else(|| self.short()))
                    .collect();
            }
            let keys: Vec<&str> = taken
                .iter()
                .filter_map(|&i| tasks[i].unique_key.as_deref())
                .collect();
            let holders = self.holders(c, &keys).await?;
            todo.clear();
            for i in taken {
                let k = tasks[i].unique_key.as_deref().unwrap_or_default();
                match holders.get(k) {
                    Some(&id) => out[i] = Some(Pushed::Duplicate(id)),
                    // Settled since the insert: the key is free again.
                    None => todo.push(i),
                }
            }
            if todo.is_empty() {
                return out
                    .into_iter()
                    .map(|p| p.ok_or_else(|| self.short()))
                    .collect();
            }
        }
        Err(self.shared.error(format!(
            "queue {:?}: unique keys kept changing hands during a push; try again",
            self.name
        )))
    }

    /// Runs `sql/push.sql` for `tasks[todo]`: returns the ids of the new
    /// keyed tasks by key, and those of the new plain tasks in input order.
    async fn insert_rows(
        &self,
        c: &impl GenericClient,
        tasks: &[NewTask],
        todo: &[usize],
    ) -> Result<(HashMap<String, u64>, Vec<u64>), QueueError> {
        let sh = &self.shared;
        let now = self.now();
        let payloads: Vec<&[u8]> = todo.iter().map(|&i| tasks[i].payload.as_slice()).collect();
        let keys: Vec<Option<&str>> = todo
            .iter()
            .map(|&i| tasks[i].unique_key.as_deref())
            .collect();
        let visible: Vec<i64> = todo
            .iter()
            .map(|&i| now.saturating_add(tasks[i].delay.map_or(0, duration_ms)))
            .collect();
        let per_row = i64::try_from(sh.opts.tasks_per_row).unwrap_or(i64::MAX);
        let rows = sh
            .query_cached(
                c,
                &sh.sql.push,
                &[&&*self.name, &payloads, &keys, &visible, &now, &per_row],
            )
            .await?;
        let mut keyed = HashMap::new();
        let mut plain = Vec::with_capacity(rows.len());
        // Rows come ordered by id, which ascends in input order.
        for r in rows {
            let id: i64 = r.try_get(0).map_err(|e| sh.pg_error(e))?;
            match r
                .try_get::<_, Option<String>>(1)
                .map_err(|e| sh.pg_error(e))?
            {
                Some(k) => {
                    keyed.insert(k, unsigned(id));
                }
                None => plain.push(unsigned(id)),
            }
        }
        Ok((keyed, plain))
    }

    /// The ids of the live tasks holding `keys`.
    async fn holders(
        &self,
        c: &impl GenericClient,
        keys: &[&str],
    ) -> Result<HashMap<String, u64>, QueueError> {
        let sh = &self.shared;
        let rows = sh
            .query_cached(c, &sh.sql.holders, &[&&*self.name, &keys])
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get(0).map_err(|e| sh.pg_error(e))?;
            let k: String = r.try_get(1).map_err(|e| sh.pg_error(e))?;
            out.insert(k, unsigned(id));
        }
        Ok(out)
    }

    /// The error for a reply with fewer rows than tasks inserted.
    fn short(&self) -> QueueError {
        self.shared.error(format!(
            "queue {:?}: the push statement returned fewer ids than tasks it inserted",
            self.name
        ))
    }
}

//! [`PostgresQueue`]: one queue's operations, each one statement from `sql/`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{Shared, columns, transient};
use crate::backoff::Backoff;
use crate::queue::util::{PushRoom, lock};
use crate::queue::{
    Action, BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, Settle, Settled,
    Task,
};

/// A queue in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresQueue {
    pub(super) name: Arc<str>,
    pub(super) shared: Arc<Shared>,
    /// The leases this handle took and has not settled: only its holder
    /// knows their nonces, so no one else can settle or renew them.
    held: Mutex<Held>,
    /// Tasks per row in this queue's last lease: how many rows the next
    /// one locks (see `sql/lease.sql`).
    row_size: AtomicUsize,
}

/// A leased row: its id and the lease's nonce.
type RowLease = (i64, i64);

/// The leases a handle holds.
#[derive(Debug, Default)]
struct Held {
    /// Each leased task's row.
    leases: HashMap<Lease, RowLease>,
    /// Each leased row's tasks not settled yet.
    rows: HashMap<RowLease, Unsettled>,
}

/// What a handle knows of a row it leased.
#[derive(Debug, Clone, Copy)]
struct Unsettled {
    /// Its tasks not settled yet.
    tasks: usize,
    /// Whether any of its tasks holds a unique key.
    keyed: bool,
}

impl Held {
    /// Forgets `lease`, once settled.
    fn forget(&mut self, lease: &Lease) {
        if let Some(row) = self.leases.remove(lease)
            && let Some(u) = self.rows.get_mut(&row)
        {
            u.tasks = u.tasks.saturating_sub(1);
            if u.tasks == 0 {
                self.rows.remove(&row);
            }
        }
    }
}

/// Rows whose tasks are all acked: their ids and lease nonces, without
/// and with unique keys (`sql/ack.sql`, `sql/ack_keyed.sql`).
#[derive(Default)]
struct Whole {
    plain: (Vec<i64>, Vec<i64>),
    keyed: (Vec<i64>, Vec<i64>),
}

/// The arguments of `sql/settle.sql`, one position per task.
#[derive(Default)]
struct Mixed {
    rows: Vec<i64>,
    nonces: Vec<i64>,
    ids: Vec<i64>,
    acts: String,
    ats: Vec<i64>,
    reasons: Vec<String>,
}

impl Mixed {
    fn add(&mut self, (row, nonce): RowLease, s: &Settle) {
        self.rows.push(row);
        self.nonces.push(nonce);
        self.ids.push(sql_id(s.lease.id));
        let (act, at, reason) = match &s.action {
            Action::Ack => ('a', 0, ""),
            Action::RetryAt(at) => ('r', sql_ms(*at), ""),
            Action::Release => ('l', 0, ""),
            Action::DeadLetter(reason) => ('d', 0, reason.as_str()),
        };
        self.acts.push(act);
        self.ats.push(at);
        self.reasons.push(reason.to_owned());
    }
}

fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Non-negative database numbers as the queue's unsigned ones.
pub(super) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PostgresQueue {
    pub(super) fn new(name: &str, shared: Arc<Shared>) -> Self {
        Self {
            name: name.into(),
            shared,
            held: Mutex::new(Held::default()),
            row_size: AtomicUsize::new(1),
        }
    }

    pub(super) fn now(&self) -> i64 {
        sql_ms(self.shared.clock.now_ms())
    }

    /// A task of this queue from a dead letter's row, whose first columns
    /// are `id, unique_key, payload, attempt, enqueued_at`.
    fn task(&self, r: &tokio_postgres::Row) -> Result<Task, tokio_postgres::Error> {
        let attempt: i32 = r.try_get(3)?;
        Ok(Task {
            id: unsigned(r.try_get(0)?),
            queue: self.name.clone(),
            unique_key: r.try_get(1)?,
            payload: r.try_get(2)?,
            attempt: u32::try_from(attempt).unwrap_or(0),
            enqueued_at_ms: unsigned(r.try_get(4)?),
        })
    }

    /// Runs `op` again after connection errors, with back-off, for up to
    /// `retry_for`; `op` must be idempotent.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let deadline = crate::clock::deadline_in(self.shared.opts.retry_for);
        let mut failures = 0u32;
        loop {
            match op().await {
                Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(queue = %self.name, error = %e, "retrying after a lost PostgreSQL connection");
                    tokio::time::sleep(backoff.delay(failures)).await;
                }
                r => return r,
            }
        }
    }

    /// Deletes the rows of one list of `Whole` (`keyed`: with the unique
    /// keys they free); returns the tasks deleted. No round trip for none.
    async fn ack_rows(
        &self,
        c: &impl GenericClient,
        (rows, nonces): &(Vec<i64>, Vec<i64>),
        keyed: bool,
    ) -> Result<u64, QueueError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let sh = &self.shared;
        let r = if keyed {
            sh.query_cached(c, &sh.sql.ack_keyed, &[rows, nonces, &&*self.name])
                .await?
        } else {
            sh.query_cached(c, &sh.sql.ack, &[rows, nonces]).await?
        };
        let n: i64 = r
            .first()
            .map_or(Ok(0), |r| r.try_get(0))
            .map_err(|e| sh.pg_error(e))?;
        Ok(unsigned(n))
    }

    /// Applies the settlements: rows whose tasks are all acked are deleted
    /// (`sql/ack.sql`, `sql/ack_keyed.sql`), the others go through the
    /// `settle` function, in one transaction when it takes more than one
    /// statement. Returns the tasks settled.
    async fn settle_once(&self, whole: &Whole, mixed: &Mixed) -> Result<u64, QueueError> {
        let sh = &self.shared;
        let mut conn = sh.conn().await?;
        let e = |e: tokio_postgres::Error| sh.pg_error(e);
        if mixed.ids.is_empty() && (whole.plain.0.is_empty() || whole.keyed.0.is_empty()) {
            // Only whole rows acked (what the pool mostly sends): one
            // statement is atomic on its own, no transaction round trips.
            let plain = self.ack_rows(&conn, &whole.plain, false).await?;
            return Ok(plain + self.ack_rows(&conn, &whole.keyed, true).await?);
        }
        let tx = conn.transaction().await.map_err(e)?;
        let mut applied = self.ack_rows(&tx, &whole.plain, false).await?
            + self.ack_rows(&tx, &whole.keyed, true).await?;
        if mixed.ids.is_empty() {
            tx.commit().await.map_err(e)?;
            return Ok(applied);
        }
        let r = tx
            .query_one(
                &sh.sql.settle,
                &[
                    &&*self.name,
                    &mixed.rows,
                    &mixed.nonces,
                    &mixed.ids,
                    &mixed.acts,
                    &mixed.ats,
                    &mixed.reasons,
                    &self.now(),
                ],
            )
            .await
            .map_err(e)?;
        let (done, released, dead): (i64, i64, i64) = columns(&r).map_err(e)?;
        applied += unsigned(done);
        if released > 0 {
            tx.query_one(&sh.sql.notify, &[&&*self.name])
                .await
                .map_err(e)?;
        }
        if dead > 0 {
            let keep = i64::try_from(sh.opts.dead_capacity).unwrap_or(i64::MAX);
            tx.execute(&sh.sql.trim_dead, &[&&*self.name, &keep])
                .await
                .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        Ok(applied)
    }
}

#[async_trait]
impl BaseQueue for PostgresQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let opts = &self.shared.opts;
        let room = PushRoom::start(&self.name, opts.capacity, opts.push_timeout, tasks.len())?;
        loop {
            if let Some(out) = self.push_once(&tasks).await? {
                return Ok(out);
            }
            // Full: settlements on any host make room; look again shortly.
            room.wait(tokio::time::sleep(Duration::from_millis(20)))
                .await?;
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let sh = &self.shared;
        let now = self.now();
        let until = now.saturating_add(duration_ms(ttl));
        let nonce = fastrand::i64(..);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // One row more than the last lease's row size says: a row part
        // taken by an earlier lease is smaller.
        let per_row = self.row_size.load(Ordering::Relaxed).max(1);
        let row_limit =
            i64::try_from(max.div_ceil(per_row).saturating_add(1).min(max)).unwrap_or(i64::MAX);
        let holder = lock(&sh.holder).clone();
        let conn = sh.conn().await?;
        let rows = sh
            .query_cached(
                &conn,
                &sh.sql.lease,
                &[
                    &&*self.name,
                    &now,
                    &limit,
                    &until,
                    &nonce,
                    &holder.as_deref(),
                    &row_limit,
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(max);
        let mut taken = Vec::with_capacity(rows.len());
        for r in &rows {
            #[allow(clippy::type_complexity)]
            let (id, ids, payloads, keys, attempt, enqueued_at, was): (
                i64,
                Vec<i64>,
                Vec<Vec<u8>>,
                Option<Vec<Option<String>>>,
                i32,
                i64,
                i64,
            ) = columns(r).map_err(|e| sh.pg_error(e))?;
            let keyed = keys.is_some();
            let keys = keys.unwrap_or_else(|| vec![None; ids.len()]);
            if ids.len() != payloads.len() || ids.len() != keys.len() {
                return Err(sh.error(format!(
                    "queue {:?}: row {id} holds {} task ids, {} payloads and {} keys",
                    self.name,
                    ids.len(),
                    payloads.len(),
                    keys.len()
                )));
            }
            taken.push((
                (id, nonce),
                Unsettled {
                    tasks: ids.len(),
                    keyed,
                },
            ));
            for ((task, payload), unique_key) in ids.into_iter().zip(payloads).zip(keys) {
                out.push((
                    was,
                    id,
                    Task {
                        id: unsigned(task),
                        queue: self.name.clone(),
                        unique_key,
                        payload,
                        attempt: u32::try_from(attempt).unwrap_or(0),
                        enqueued_at_ms: unsigned(enqueued_at),
                    },
                ));
            }
        }
        if !rows.is_empty() {
            self.row_size
                .store((out.len() / rows.len()).max(1), Ordering::Relaxed);
        }
        out.sort_by_key(|(was_visible, _, t)| (*was_visible, t.id));
        let mut held = lock(&self.held);
        for (row, u) in taken {
            held.rows.insert(row, u);
        }
        Ok(out
            .into_iter()
            .map(|(_, row, t)| {
                held.leases.insert(t.lease(), (row, nonce));
                t
            })
            .collect())
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        // Leases per row: a renewal extends whole rows.
        let mut per_row: HashMap<RowLease, usize> = HashMap::new();
        {
            let held = lock(&self.held);
            for l in leases {
                if let Some(&row) = held.leases.get(l) {
                    *per_row.entry(row).or_default() += 1;
                }
            }
        }
        if per_row.is_empty() {
            return Ok(0);
        }
        let (rows, nonces): (Vec<i64>, Vec<i64>) = per_row.keys().copied().unzip();
        let sh = &self.shared;
        self.retrying(|| async {
            let now = self.now();
            let until = now.saturating_add(duration_ms(ttl));
            let conn = sh.conn().await?;
            let still = sh
                .query_cached(&conn, &sh.sql.renew, &[&until, &rows, &nonces, &now])
                .await?;
            let mut n = 0;
            for r in &still {
                let row: RowLease = columns(r).map_err(|e| sh.pg_error(e))?;
                n += per_row.get(&row).copied().unwrap_or(0);
            }
            Ok(n)
        })
        .await
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        let total = settlements.len();
        let mut whole = Whole::default();
        let mut mixed = Mixed::default();
        {
            let held = lock(&self.held);
            // A lease this handle never took (or already settled) is lost.
            let mut by_row: HashMap<RowLease, Vec<&Settle>> = HashMap::new();
            for s in &settlements {
                if let Some(&row) = held.leases.get(&s.lease) {
                    by_row.entry(row).or_default().push(s);
                }
            }
            for (row, ss) in by_row {
                let u = held.rows.get(&row).copied();
                let all = u.map_or(0, |u| u.tasks);
                if ss.len() == all && ss.iter().all(|s| matches!(s.action, Action::Ack)) {
                    let list = if u.is_some_and(|u| u.keyed) {
                        &mut whole.keyed
                    } else {
                        &mut whole.plain
                    };
                    list.0.push(row.0);
                    list.1.push(row.1);
                } else {
                    for s in ss {
                        mixed.add(row, s);
                    }
                }
            }
        }
        let applied = self.retrying(|| self.settle_once(&whole, &mixed)).await?;
        {
            let mut held = lock(&self.held);
            for s in &settlements {
                held.forget(&s.lease);
            }
        }
        self.shared.settled(applied).await;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX).min(total);
        Ok(Settled {
            applied,
            lost: total - applied,
        })
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let sh = &self.shared;
        let conn = sh.conn().await?;
        let r = conn
            .query_one(&sh.sql.stats, &[&&*self.name, &self.now()])
            .await
            .map_err(|e| sh.pg_error(e))?;
        let get = |i| -> Result<u64, QueueError> {
            r.try_get::<_, i64>(i)
                .map(unsigned)
                .map_err(|e| sh.pg_error(e))
        };
        Ok(QueueStats {
            pending: get(0)?,
            delayed: get(1)?,
            leased: get(2)?,
            dead: get(3)?,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        let sh = &self.shared;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = sh.conn().await?;
        let rows = conn
            .query(&sh.sql.dead_letters, &[&&*self.name, &limit])
            .await
            .map_err(|e| sh.pg_error(e))?;
        rows.iter()
            .map(|r| {
                Ok(DeadTask {
                    task: self.task(r)?,
                    reason: r.try_get(5)?,
                    failed_at_ms: unsigned(r.try_get(6)?),
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| sh.pg_error(e))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.shared.ensure_listening();
        let wake = self.shared.wakes.of(&self.name);
        let _ = tokio::time::timeout(timeout, wake.notified()).await;
    }

    fn admin(&self) -> Option<&dyn crate::queue::QueueAdmin> {
        Some(self)
    }
}

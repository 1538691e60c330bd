//! [`PostgresQueue`]: one queue's operations, each one statement from `sql/`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Shared, transient};
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
    /// The nonce of each lease this handle took and has not settled: only
    /// its holder knows it, so no one else can settle or renew the lease.
    nonces: Mutex<HashMap<Lease, i64>>,
}

/// Leases of one action, as the statements' array parameters.
#[derive(Default)]
struct Group {
    ids: Vec<i64>,
    nonces: Vec<i64>,
    attempts: Vec<i32>,
}

impl Group {
    fn add(&mut self, lease: Lease, nonce: i64) {
        self.ids.push(sql_id(lease.id));
        self.nonces.push(nonce);
        self.attempts.push(sql_attempt(lease.attempt));
    }
}

fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn sql_attempt(a: u32) -> i32 {
    i32::try_from(a).unwrap_or(i32::MAX)
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
            nonces: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn now(&self) -> i64 {
        sql_ms(self.shared.clock.now_ms())
    }

    /// A task of this queue from a row whose first columns are `id,
    /// unique_key, payload, attempt, enqueued_at` (lease and dead-letter
    /// rows alike).
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

    /// Applies the grouped settlements in one transaction; returns how
    /// many took effect.
    async fn settle_once(
        &self,
        ack: &Group,
        retry: &(Group, Vec<i64>),
        release: &Group,
        dead: &(Group, Vec<String>),
    ) -> Result<u64, QueueError> {
        let sh = &self.shared;
        let now = self.now();
        let mut conn = sh.conn().await?;
        let e = |e: tokio_postgres::Error| sh.pg_error(e);
        if retry.0.ids.is_empty() && release.ids.is_empty() && dead.0.ids.is_empty() {
            // Only acks (what the pool mostly sends): one statement is
            // atomic on its own, no transaction round trips needed.
            return sh
                .execute_cached(&conn, &sh.sql.ack, &[&ack.ids, &ack.nonces, &ack.attempts])
                .await;
        }
        let tx = conn.transaction().await.map_err(e)?;
        let mut applied = 0;
        if !ack.ids.is_empty() {
            applied += sh
                .execute_cached(&tx, &sh.sql.ack, &[&ack.ids, &ack.nonces, &ack.attempts])
                .await?;
        }
        let (g, ats) = retry;
        if !g.ids.is_empty() {
            applied += tx
                .execute(&sh.sql.retry, &[&g.ids, &g.nonces, &g.attempts, ats])
                .await
                .map_err(e)?;
        }
        if !release.ids.is_empty() {
            let n = tx
                .execute(
                    &sh.sql.release,
                    &[&release.ids, &release.nonces, &release.attempts, &now],
                )
                .await
                .map_err(e)?;
            if n > 0 {
                tx.query_one(&sh.sql.notify, &[&&*self.name])
                    .await
                    .map_err(e)?;
            }
            applied += n;
        }
        let (g, reasons) = dead;
        if !g.ids.is_empty() {
            let n = tx
                .execute(
                    &sh.sql.dead,
                    &[&g.ids, &g.nonces, &g.attempts, reasons, &now],
                )
                .await
                .map_err(e)?;
            if n > 0 {
                let keep = i64::try_from(sh.opts.dead_capacity).unwrap_or(i64::MAX);
                tx.execute(&sh.sql.trim_dead, &[&&*self.name, &keep])
                    .await
                    .map_err(e)?;
            }
            applied += n;
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
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let get = || -> Result<(i64, Task), tokio_postgres::Error> {
                Ok((r.try_get(5)?, self.task(&r)?))
            };
            out.push(get().map_err(|e| sh.pg_error(e))?);
        }
        out.sort_by_key(|(was_visible, t)| (*was_visible, t.id));
        let mut nonces = lock(&self.nonces);
        Ok(out
            .into_iter()
            .map(|(_, t)| {
                nonces.insert(t.lease(), nonce);
                t
            })
            .collect())
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        let mut g = Group::default();
        {
            let nonces = lock(&self.nonces);
            for l in leases {
                if let Some(&n) = nonces.get(l) {
                    g.add(*l, n);
                }
            }
        }
        if g.ids.is_empty() {
            return Ok(0);
        }
        let sh = &self.shared;
        self.retrying(|| async {
            let now = self.now();
            let until = now.saturating_add(duration_ms(ttl));
            let conn = sh.conn().await?;
            let n = sh
                .execute_cached(
                    &conn,
                    &sh.sql.renew,
                    &[&until, &g.ids, &g.nonces, &g.attempts, &now],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        let total = settlements.len();
        let (mut ack, mut retry, mut release, mut dead) = (
            Group::default(),
            (Group::default(), Vec::new()),
            Group::default(),
            (Group::default(), Vec::new()),
        );
        {
            let nonces = lock(&self.nonces);
            for s in &settlements {
                // A lease this handle never took (or already settled) is lost.
                let Some(&n) = nonces.get(&s.lease) else {
                    continue;
                };
                match &s.action {
                    Action::Ack => ack.add(s.lease, n),
                    Action::RetryAt(at) => {
                        retry.0.add(s.lease, n);
                        retry.1.push(sql_ms(*at));
                    }
                    Action::Release => release.add(s.lease, n),
                    Action::DeadLetter(reason) => {
                        dead.0.add(s.lease, n);
                        dead.1.push(reason.clone());
                    }
                }
            }
        }
        let applied = self
            .retrying(|| self.settle_once(&ack, &retry, &release, &dead))
            .await?;
        {
            let mut nonces = lock(&self.nonces);
            for s in &settlements {
                nonces.remove(&s.lease);
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

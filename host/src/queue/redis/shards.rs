//! Sharded queues: `[redis.shards] NAME = N` splits queue `NAME` into N
//! sub-queues `{NAME#0}` ... `{NAME#N-1}` (tags chosen so their slots lie
//! in different N-ths of the slot space: see `keys::shard_prefix`), each a
//! whole queue of its own (see `queue.rs`), so a Redis Cluster of N masters
//! puts one on each and one queue is no longer capped at one core.
//!
//! [`ShardedQueue`] shows the N as one queue, as every host, `host status`,
//! the metrics and the API see it:
//! - **Ids.** Shard `i` numbers its tasks `1, 2, ...`; the queue's id of
//!   local id `l` is `l * N + i`, so ids stay unique and name their shard.
//! - **Pushes.** A task with a unique key goes to the shard its key hashes
//!   to (FNV-1a, the same in every version and host), so a key lives in one
//!   shard and stays unique; the tasks without one go, a batch at a time,
//!   to the shards in turn.
//! - **Leases.** Each lease call starts at the next shard in turn and fills
//!   the batch from the shards after it, so every shard is drained; a shard
//!   that fails (its master failing over) does not stop the others.
//! - **Capacity** is split evenly: each shard holds at most
//!   `ceil(capacity / N)` tasks.
//!
//! The shard count is part of the queue's layout in Redis: the first host
//! or client to use a queue records it in the hash `taskhost:shards` (its
//! configured count, or 1), and every later one must agree. Changing it
//! needs a drained queue and `HDEL taskhost:shards NAME`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use tokio::sync::{Notify, OnceCell};

use super::queue::RedisQueue;
use super::{Shared, keys};
use crate::queue::admin::{AdminError, PeekPage, PeekedTask, QueueAdmin, Which};
use crate::queue::util::lock;
use crate::queue::{
    BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, Settle, Settled, Task,
    TaskId,
};

/// Most shards one queue may have.
pub(super) const MAX_SHARDS: usize = 64;

impl Shared {
    /// The shard count of queue `name`, as recorded in Redis (recording
    /// this host's when none is); refused when the configuration disagrees.
    /// The queue's keys are brought to this version's layout first.
    pub(super) async fn layout(&self, name: &str) -> Result<usize, QueueError> {
        if let Some(&n) = lock(&self.layouts).get(name) {
            return Ok(n);
        }
        let configured = self.opts.shards.get(name).copied();
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSETNX")
            .arg(keys::SHARDS)
            .arg(name)
            .arg(configured.unwrap_or(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let recorded = self.hget(keys::SHARDS, name).await?;
        let n = recorded
            .as_deref()
            .and_then(|r| r.parse::<usize>().ok())
            .filter(|n| (1..=MAX_SHARDS).contains(n))
            .ok_or_else(|| QueueError::Redis {
                url: self.url.clone(),
                message: format!(
                    "{} holds {recorded:?} as the shard count of queue {name:?}: not 1 to {MAX_SHARDS}",
                    keys::SHARDS
                ),
            })?;
        if let Some(c) = configured.filter(|&c| c != n) {
            return Err(QueueError::Config(format!(
                "queue {name:?} has {n} shard(s) in Redis, but redis.shards.{name} = {c}; \
                 the count is fixed when a queue is first used: drain it and run \
                 `redis-cli HDEL {} {name}` to change it",
                keys::SHARDS
            )));
        }
        self.migrate(name, n).await?;
        lock(&self.layouts).insert(name.to_owned(), n);
        Ok(n)
    }
}

/// A queue of one or more shards, seen as one.
#[derive(Debug)]
pub struct ShardedQueue {
    name: Arc<str>,
    shared: Arc<Shared>,
    shards: OnceCell<Vec<RedisQueue>>,
    wake: Arc<Notify>,
    next_push: AtomicUsize,
    next_lease: AtomicUsize,
}

/// The queue's id of shard `i`'s local id `local`, with `n` shards.
fn global(local: TaskId, i: usize, n: usize) -> TaskId {
    local * n as u64 + i as u64
}

/// The shard and local id of the queue's id `id`, with `n` shards.
fn split(id: TaskId, n: usize) -> (usize, TaskId) {
    ((id % n as u64) as usize, id / n as u64)
}

/// The shard a unique key belongs to: FNV-1a, stable across versions.
fn shard_of_key(key: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as usize
}

/// An admin error with shard `i`'s local ids made the queue's.
fn admin_error(e: AdminError, i: usize, n: usize) -> AdminError {
    match e {
        AdminError::Leased { queue, id } => AdminError::Leased {
            queue,
            id: global(id, i, n),
        },
        AdminError::NotFound { queue, id, wanted } => AdminError::NotFound {
            queue,
            id: global(id, i, n),
            wanted,
        },
        e => e,
    }
}

impl ShardedQueue {
    /// The handle of queue `name`; its layout is read at first use.
    pub(super) fn new(name: &str, shared: Arc<Shared>) -> Self {
        Self {
            name: name.into(),
            wake: shared.wakes.of(name),
            shared,
            shards: OnceCell::new(),
            next_push: AtomicUsize::new(0),
            next_lease: AtomicUsize::new(0),
        }
    }

    async fn shards(&self) -> Result<&[RedisQueue], QueueError> {
        let shards = self
            .shards
            .get_or_try_init(|| async {
                let n = self.shared.layout(&self.name).await?;
                let capacity = self.shared.opts.capacity.map(|c| c.div_ceil(n));
                Ok::<_, QueueError>(
                    (0..n)
                        .map(|i| {
                            let prefix = keys::shard_prefix(&self.name, i, n);
                            RedisQueue::new(&self.name, prefix, capacity, self.shared.clone())
                        })
                        .collect(),
                )
            })
            .await?;
        Ok(shards)
    }

    /// The shards in the order a call should visit them: a new start each call.
    fn rotation(counter: &AtomicUsize, n: usize) -> impl Iterator<Item = usize> {
        let start = counter.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(move |k| (start + k) % n)
    }

    /// `leases` grouped by shard, with local ids.
    fn by_shard<T>(
        n: usize,
        items: impl IntoIterator<Item = T>,
        id: impl Fn(&mut T) -> &mut TaskId,
    ) -> Vec<Vec<T>> {
        let mut groups: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
        for mut item in items {
            let (i, local) = split(*id(&mut item), n);
            *id(&mut item) = local;
            groups[i].push(item);
        }
        groups
    }
}

#[async_trait]
impl BaseQueue for ShardedQueue {
    async fn wait_for_work(&self, timeout: Duration) {
        self.shared.ensure_listening();
        // Every shard's wake channel rings this queue's one waiter. A wake
        // that came while nobody waited is kept (one permit), so a push
        // between a failed lease and this wait is not missed.
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    fn admin(&self) -> Option<&dyn QueueAdmin> {
        Some(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        let shards = self.shards().await?;
        let n = shards.len();
        if n == 1 {
            return shards[0].push_batch(tasks).await;
        }
        let keyless = self.next_push.fetch_add(1, Ordering::Relaxed) % n;
        let mut groups: Vec<(Vec<usize>, Vec<NewTask>)> =
            (0..n).map(|_| Default::default()).collect();
        let total = tasks.len();
        for (at, t) in tasks.into_iter().enumerate() {
            let i = t
                .unique_key
                .as_deref()
                .map_or(keyless, |k| shard_of_key(k, n));
            groups[i].0.push(at);
            groups[i].1.push(t);
        }
        let pushes = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (at, _))| !at.is_empty())
            .map(|(i, (at, tasks))| async move {
                let pushed = shards[i].push_batch(tasks).await?;
                Ok::<_, QueueError>((i, at, pushed))
            });
        let mut out = vec![Pushed::Created(0); total];
        for (i, at, pushed) in try_join_all(pushes).await? {
            for (at, p) in at.into_iter().zip(pushed) {
                out[at] = match p {
                    Pushed::Created(id) => Pushed::Created(global(id, i, n)),
                    Pushed::Duplicate(id) => Pushed::Duplicate(global(id, i, n)),
                };
            }
        }
        Ok(out)
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        let shards = self.shards().await?;
        let n = shards.len();
        if n == 1 {
            return shards[0].lease(max, ttl).await;
        }
        let mut out = Vec::new();
        let mut failed = None;
        for i in Self::rotation(&self.next_lease, n) {
            if out.len() >= max {
                break;
            }
            match shards[i].lease(max - out.len(), ttl).await {
                Ok(tasks) => out.extend(tasks.into_iter().map(|mut t| {
                    t.id = global(t.id, i, n);
                    t
                })),
                Err(e) => {
                    tracing::warn!(queue = %self.name, shard = i, error = %e, "cannot lease from a shard; leasing from the others");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        let shards = self.shards().await?;
        let n = shards.len();
        if n == 1 {
            return shards[0].renew(leases, ttl).await;
        }
        let groups = Self::by_shard(n, leases.iter().copied(), |l| &mut l.id);
        let calls = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(i, g)| shards[i].renew(g, ttl));
        Ok(try_join_all(calls).await?.into_iter().sum())
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        let shards = self.shards().await?;
        let n = shards.len();
        if n == 1 {
            return shards[0].settle(settlements).await;
        }
        let groups = Self::by_shard(n, settlements, |s| &mut s.lease.id);
        let calls = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(i, g)| shards[i].settle(g));
        // Each shard settles on its own: one failing leaves the others applied.
        let mut total = Settled::default();
        let mut failed = None;
        for r in join_all(calls).await {
            match r {
                Ok(s) => {
                    total.applied += s.applied;
                    total.lost += s.lost;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let shards = self.shards().await?;
        let all = try_join_all(shards.iter().map(|s| s.stats())).await?;
        Ok(all
            .into_iter()
            .fold(QueueStats::default(), |a, s| QueueStats {
                pending: a.pending + s.pending,
                delayed: a.delayed + s.delayed,
                leased: a.leased + s.leased,
                dead: a.dead + s.dead,
            }))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        let shards = self.shards().await?;
        let n = shards.len();
        let all = try_join_all(shards.iter().map(|s| s.dead_letters(limit))).await?;
        let mut out: Vec<DeadTask> = all
            .into_iter()
            .enumerate()
            .flat_map(|(i, dead)| {
                dead.into_iter().map(move |mut d| {
                    d.task.id = global(d.task.id, i, n);
                    d
                })
            })
            .collect();
        // Newest (highest id) first, as one shard lists them.
        out.sort_by_key(|d| std::cmp::Reverse(d.task.id));
        out.truncate(limit);
        Ok(out)
    }
}

#[async_trait]
impl QueueAdmin for ShardedQueue {
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError> {
        let shards = self.shards().await?;
        let n = shards.len();
        let pages = shards.iter().enumerate().map(|(i, s)| async move {
            // Local ids whose queue id is above `after`: above this one.
            let after = page.after.checked_sub(i as u64).map_or(0, |a| a / n as u64);
            let got = s
                .peek_page(PeekPage { after, ..page })
                .await
                .map_err(|e| admin_error(e, i, n))?;
            Ok::<_, AdminError>(got.into_iter().map(move |mut t| {
                t.id = global(t.id, i, n);
                t
            }))
        });
        let mut out: Vec<PeekedTask> = try_join_all(pages).await?.into_iter().flatten().collect();
        out.sort_by_key(|t| t.id);
        out.truncate(page.limit);
        Ok(out)
    }

    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError> {
        self.each_dead(which, DeadOp::Retry).await
    }

    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError> {
        self.each_dead(which, DeadOp::Purge).await
    }

    async fn cancel(&self, id: TaskId) -> Result<(), AdminError> {
        self.on_task(id, TaskOp::Cancel).await
    }

    async fn run_now(&self, id: TaskId) -> Result<(), AdminError> {
        self.on_task(id, TaskOp::RunNow).await
    }

    async fn set_paused(&self, paused: bool) -> Result<(), AdminError> {
        let shards = self.shards().await?;
        // Shard 0 answers `is_paused`, so it changes last: a pause is
        // reported only once every shard holds it.
        for s in shards.iter().skip(1).chain(shards.first()) {
            s.set_paused(paused).await?;
        }
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool, AdminError> {
        let shards = self.shards().await?;
        shards[0].is_paused().await
    }
}

/// An action on one pending or delayed task.
#[derive(Clone, Copy)]
enum TaskOp {
    Cancel,
    RunNow,
}

impl ShardedQueue {
    /// Runs `op` on task `id` in the shard its id names.
    async fn on_task(&self, id: TaskId, op: TaskOp) -> Result<(), AdminError> {
        let shards = self.shards().await?;
        let (i, local) = split(id, shards.len());
        let r = match op {
            TaskOp::Cancel => shards[i].cancel(local).await,
            TaskOp::RunNow => shards[i].run_now(local).await,
        };
        r.map_err(|e| admin_error(e, i, shards.len()))
    }
}

/// A dead-letter action.
#[derive(Clone, Copy)]
enum DeadOp {
    Retry,
    Purge,
}

impl DeadOp {
    async fn on(self, shard: &RedisQueue, which: Which) -> Result<u64, AdminError> {
        match self {
            DeadOp::Retry => shard.retry_dead(which).await,
            DeadOp::Purge => shard.purge_dead(which).await,
        }
    }
}

impl ShardedQueue {
    /// Runs `op` on every shard `which` names (with local ids); sums the counts.
    async fn each_dead(&self, which: Which, op: DeadOp) -> Result<u64, AdminError> {
        let shards = self.shards().await?;
        let n = shards.len();
        let mut done = 0;
        match which {
            Which::All => {
                for s in shards {
                    done += op.on(s, Which::All).await?;
                }
            }
            Which::Ids(ids) => {
                for (i, ids) in Self::by_shard(n, ids, |id| id).into_iter().enumerate() {
                    if !ids.is_empty() {
                        done += op.on(&shards[i], Which::Ids(ids)).await?;
                    }
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_shard_and_keep_their_order_within_it() {
        for n in [1, 3, 7] {
            for i in 0..n {
                for local in [1, 2, 1_000_000] {
                    assert_eq!(split(global(local, i, n), n), (i, local));
                }
            }
        }
        // `after` in queue ids maps to the right local bound per shard.
        let n = 3;
        for after in 0..30u64 {
            for i in 0..n {
                let bound = after.checked_sub(i as u64).map(|a| a / n as u64);
                for local in 1..12u64 {
                    let above = global(local, i, n) > after;
                    assert_eq!(
                        above,
                        bound.is_none_or(|b| local > b),
                        "after {after} shard {i} local {local}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_unique_key_always_hashes_to_the_same_shard() {
        // Fixed values: every host and version must agree.
        assert_eq!(shard_of_key("", 3), (0xcbf2_9ce4_8422_2325u64 % 3) as usize);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|k| shard_of_key(&format!("key-{k}"), 3))
            .collect();
        assert_eq!(spread.len(), 3, "keys spread over every shard");
        assert_eq!(shard_of_key("key-7", 3), shard_of_key("key-7", 3));
    }
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod redis_tests;

//! One named queue in Redis: builds each script's arguments and reads its
//! reply (the scripts themselves are in `scripts/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::codec::{Element, pack, unpack, unpack_dead};
use super::script::{array, int};
use super::{Shared, keys};
use crate::backoff::Backoff;
use crate::clock;
use crate::queue::util::{PushRoom, lock};
use crate::queue::{
    Action, BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, Settle, Settled,
    Task,
};

/// Most expired batches a stats call counts as pending (one `LLEN` each);
/// any beyond still count as leased until a lease call reclaims them.
const STATS_EXPIRED_BATCHES: usize = 1_000;

/// One queue, or one shard of a sharded queue (see `shards.rs`), in Redis.
#[derive(Debug)]
pub struct RedisQueue {
    pub(super) name: Arc<str>,
    /// The key prefix: the queue's, or its shard's.
    pub(super) prefix: String,
    /// Most tasks this queue (or shard) holds.
    capacity: Option<usize>,
    pub(super) shared: Arc<Shared>,
    registered: AtomicBool,
    /// The leases this handle holds: only their holder can settle or renew
    /// them, as only it knows their batch.
    held: Mutex<HashMap<Lease, Held>>,
}

/// What a handle keeps of a lease it holds until it settles it.
#[derive(Debug)]
struct Held {
    /// The lease call that handed the task out: its record in Redis,
    /// `<number>.<nonce>` (see `scripts/lease.lua`).
    batch: Arc<str>,
    /// The task's unique key, freed by an ack or a dead letter.
    key: Option<String>,
}

impl RedisQueue {
    /// The handle of queue `name` (or one of its shards) whose keys start
    /// with `prefix`, holding at most `capacity` tasks.
    pub(super) fn new(
        name: &str,
        prefix: String,
        capacity: Option<usize>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            name: name.into(),
            prefix,
            capacity,
            shared,
            registered: AtomicBool::new(false),
            held: Mutex::default(),
        }
    }

    pub(super) fn bad_reply(&self, what: &str, v: &Value) -> QueueError {
        QueueError::Redis {
            url: self.shared.url.clone(),
            message: format!("unexpected reply to {what} on queue {:?}: {v:?}", self.name),
        }
    }

    /// The task an element leased now (or last) stands for.
    pub(super) fn task(&self, e: Element) -> Task {
        Task {
            id: e.id,
            queue: self.name.clone(),
            attempt: e.attempts.saturating_add(1),
            payload: e.payload,
            unique_key: e.key,
            enqueued_at_ms: e.enqueued_at,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Lease, Held>> {
        lock(&self.held)
    }

    /// Adds the queue to the set `host status` lists; once per process.
    async fn register(&self) -> Result<(), QueueError> {
        if self.registered.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.shared.conn.clone();
        redis::cmd("SADD")
            .arg(keys::QUEUES)
            .arg(&*self.name)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        self.registered.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Push results from the script's reply `{1, first_id, i, id, ...}`.
    fn pushed(&self, n: usize, reply: &[Value]) -> Option<Vec<Pushed>> {
        let mut next = reply.get(1).and_then(int)? as u64;
        let mut dups = HashMap::new();
        for pair in reply[2..].chunks(2) {
            match pair {
                [i, id] => dups.insert(int(i)? as usize, int(id)? as u64),
                _ => return None,
            };
        }
        Some(
            (0..n)
                .map(|i| match dups.get(&i) {
                    Some(&id) => Pushed::Duplicate(id),
                    None => {
                        next += 1;
                        Pushed::Created(next - 1)
                    }
                })
                .collect(),
        )
    }
}

#[async_trait]
impl BaseQueue for RedisQueue {
    fn admin(&self) -> Option<&dyn crate::queue::QueueAdmin> {
        Some(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        let opts = &self.shared.opts;
        let room = PushRoom::start(&self.name, self.capacity, opts.push_timeout, tasks.len())?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.register().await?;
        let poll = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let mut waits = 0;
        let mut packed = Vec::new();
        // The push script's argument shape (see `scripts/push.lua`).
        let undelayed = tasks.iter().all(|t| t.delay.is_none_or(|d| d.is_zero()));
        let shape = match () {
            _ if undelayed && tasks.iter().all(|t| t.unique_key.is_none()) => "p",
            _ if undelayed && tasks.iter().all(|t| t.unique_key.is_some()) => "k",
            _ => "g",
        };
        loop {
            let now = self.shared.clock.now_ms();
            let mut inv = self.shared.call(&self.shared.scripts.push, &self.prefix);
            inv.arg(self.capacity.unwrap_or(0)).arg(now).arg(shape);
            for t in &tasks {
                let delay = t
                    .delay
                    .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64);
                match (shape, &t.unique_key) {
                    ("p", _) => &mut inv,
                    ("k", Some(k)) => inv.arg(k.as_bytes()),
                    (_, Some(k)) => inv.arg("1").arg(k.as_bytes()),
                    (_, None) => inv.arg("0").arg(""),
                };
                pack(&mut packed, now, t.unique_key.as_deref(), &t.payload);
                inv.arg(&packed[..]);
                if shape == "g" {
                    inv.arg(delay);
                }
            }
            let v = self.shared.run(&inv).await?;
            let reply = array(v).map_err(|v| self.bad_reply("push", &v))?;
            match reply.first().and_then(int) {
                Some(1) => {
                    return self
                        .pushed(tasks.len(), &reply)
                        .ok_or_else(|| self.bad_reply("push", &Value::Array(reply)));
                }
                Some(0) => {
                    // Room is made by other hosts too: poll, backing off.
                    waits += 1;
                    room.wait(tokio::time::sleep(poll.delay(waits))).await?;
                }
                _ => return Err(self.bad_reply("push", &Value::Array(reply))),
            }
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = self.shared.clock.now_ms();
        let mut inv = self.shared.call(&self.shared.scripts.lease, &self.prefix);
        // A fresh random nonce per lease call makes the batch name unique
        // even when Redis lost writes and hands out a batch number again.
        // A registered host adds its id: the batch then names its holder,
        // and is reclaimed at once when that host is gone (`reclaim.lua`).
        let nonce = match lock(&self.shared.holder).as_deref() {
            Some(h) => format!("{:016x}@{h}", fastrand::u64(..)),
            None => format!("{:016x}", fastrand::u64(..)),
        };
        let opts = &self.shared.opts;
        inv.arg(now)
            .arg(clock::after(now, ttl))
            .arg(max)
            .arg(&nonce)
            .arg(opts.script_elements)
            .arg(opts.script_bytes);
        let v = self.shared.run(&inv).await?;
        let reply = array(v).map_err(|v| self.bad_reply("lease", &v))?;
        if reply.is_empty() {
            return Ok(Vec::new());
        }
        let (batch, elements): (Arc<str>, _) = match <[Value; 2]>::try_from(reply) {
            Ok([Value::BulkString(b), Value::Array(els)]) => match String::from_utf8(b) {
                Ok(b) if b.ends_with(&nonce) => (b.into(), els),
                Ok(b) => return Err(self.bad_reply("lease", &Value::SimpleString(b))),
                Err(e) => return Err(self.bad_reply("lease", &Value::BulkString(e.into_bytes()))),
            },
            Ok(v) => return Err(self.bad_reply("lease", &Value::Array(v.into()))),
            Err(v) => return Err(self.bad_reply("lease", &Value::Array(v))),
        };
        let mut tasks = Vec::with_capacity(elements.len());
        for e in elements {
            let parsed = match e {
                Value::BulkString(b) => unpack(b).map_err(Value::BulkString),
                other => Err(other),
            };
            match parsed {
                Ok(e) => tasks.push(self.task(e)),
                // Not written by this layout (see the module doc). It stays
                // in its batch's record, which no settlement of the others
                // removes, and comes back when the lease expires: reported
                // each time, never dropped, never blocking the tasks beside it.
                Err(other) => {
                    let shown = format!("{other:?}");
                    tracing::error!(
                        queue = %self.name,
                        url = %self.shared.url,
                        element = %shown.chars().take(120).collect::<String>(),
                        "a task element in Redis does not parse (written by another version?); it is left in Redis"
                    );
                }
            }
        }
        let mut held = self.held();
        for t in &tasks {
            held.insert(
                t.lease(),
                Held {
                    batch: batch.clone(),
                    key: t.unique_key.clone(),
                },
            );
        }
        Ok(tasks)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        // Per batch, how many of the given leases it holds.
        let mut batches: Vec<(Arc<str>, usize)> = Vec::new();
        {
            let held = self.held();
            for l in leases {
                let Some(h) = held.get(l) else { continue };
                match batches.iter_mut().find(|(b, _)| *b == h.batch) {
                    Some((_, n)) => *n += 1,
                    None => batches.push((h.batch.clone(), 1)),
                }
            }
        }
        if batches.is_empty() {
            return Ok(0);
        }
        let mut inv = self.shared.call(&self.shared.scripts.renew, &self.prefix);
        let now = self.shared.clock.now_ms();
        inv.arg(now).arg(clock::after(now, ttl));
        for (b, _) in &batches {
            inv.arg(&**b);
        }
        let v = self.shared.run_retrying(&inv).await?;
        let flags = match &v {
            Value::Array(f) if f.len() == batches.len() => f,
            _ => return Err(self.bad_reply("renew", &v)),
        };
        Ok(batches
            .iter()
            .zip(flags)
            .filter(|(_, f)| int(f) == Some(1))
            .map(|((_, n), _)| n)
            .sum())
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        // Leases this handle does not hold (settled already, or never
        // leased here) are refused without asking Redis.
        let mut unknown = 0;
        let mut batches: Vec<(Arc<str>, Vec<(Settle, Option<String>)>)> = Vec::new();
        {
            let mut held = self.held();
            for s in settlements {
                let Some(h) = held.remove(&s.lease) else {
                    unknown += 1;
                    continue;
                };
                let entry = (s, h.key);
                match batches.iter_mut().find(|(b, _)| *b == h.batch) {
                    Some((_, v)) => v.push(entry),
                    None => batches.push((h.batch, vec![entry])),
                }
            }
        }
        if batches.is_empty() {
            return Ok(Settled {
                applied: 0,
                lost: unknown,
            });
        }
        let mut inv = self.shared.call(&self.shared.scripts.settle, &self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(self.shared.opts.dead_capacity);
        let mut op = Vec::new();
        for (batch, group) in &batches {
            inv.arg(&**batch).arg(group.len());
            for (s, key) in group {
                op.clear();
                // Acks and dead letters free the key; a retry or release
                // keeps it for the task that comes back.
                match &s.action {
                    Action::Ack => op.push(if key.is_some() { b'k' } else { b'a' }),
                    Action::DeadLetter(reason) => {
                        op.push(if key.is_some() { b'D' } else { b'd' });
                        op.extend_from_slice(reason.as_bytes());
                    }
                    Action::RetryAt(at) => {
                        op.push(b'r');
                        op.extend_from_slice(at.to_string().as_bytes());
                    }
                    Action::Release => op.push(b'l'),
                }
                inv.arg(s.lease.id)
                    .arg(&op[..])
                    .arg(key.as_deref().unwrap_or(""));
            }
        }
        let v = self.shared.run_retrying(&inv).await?;
        match &v {
            Value::Array(r) => match (r.first().and_then(int), r.get(1).and_then(int)) {
                (Some(applied), Some(lost)) => Ok(Settled {
                    applied: applied as usize,
                    lost: lost as usize + unknown,
                }),
                _ => Err(self.bad_reply("settle", &v)),
            },
            _ => Err(self.bad_reply("settle", &v)),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut inv = self.shared.call(&self.shared.scripts.stats, &self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(STATS_EXPIRED_BATCHES);
        let v = self.shared.run(&inv).await?;
        let r = array(v).map_err(|v| self.bad_reply("stats", &v))?;
        let n: Option<Vec<u64>> = r.iter().map(|x| int(x).map(|n| n.max(0) as u64)).collect();
        match n.as_deref() {
            Some(&[pending, delayed, leased, dead]) => Ok(QueueStats {
                pending,
                delayed,
                leased,
                dead,
            }),
            _ => Err(self.bad_reply("stats", &Value::Array(r))),
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.shared.conn.clone();
        let entries: Vec<Vec<u8>> = redis::cmd("ZREVRANGE")
            .arg(format!("{}{}", self.prefix, keys::DEAD))
            .arg(0)
            .arg(limit - 1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        entries
            .into_iter()
            .map(|e| {
                let shown = String::from_utf8_lossy(&e).into_owned();
                let (failed_at_ms, reason, task) = unpack_dead(e)
                    .ok_or_else(|| self.bad_reply("dead letters", &Value::SimpleString(shown)))?;
                Ok(DeadTask {
                    task: self.task(task),
                    reason,
                    failed_at_ms,
                })
            })
            .collect()
    }
}

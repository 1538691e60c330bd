//! In-process bounded queue: fast, and gone with the process.
//!
//! Leases work as in the persistent backends, so the worker pool behaves the
//! same on every backend; only persistence differs.

mod admin;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::util::{Handles, PushRoom, lock};
use super::{
    Action, BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, QueueStore,
    Settle, Settled, Task, TaskId, validate_name,
};
use crate::clock::{self, Clock};

/// Settings of the memory backend; the first two are read from the host
/// configuration's `[memory]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryOptions {
    /// Most tasks (pending, delayed and leased) one queue holds.
    pub capacity: usize,
    /// How long a push waits for room in a full queue before failing.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
    /// Most dead letters kept per queue; older ones are dropped.
    #[serde(skip)]
    pub dead_capacity: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            push_timeout: Duration::from_secs(2),
            dead_capacity: 10_000,
        }
    }
}

#[derive(Debug)]
enum State {
    Ready,
    Delayed(u64),
    Leased(u64),
}

#[derive(Debug)]
struct Entry {
    task: Task,
    state: State,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: TaskId,
    ready: VecDeque<TaskId>,
    delayed: BTreeSet<(u64, TaskId)>,
    leases: BTreeSet<(u64, TaskId)>,
    tasks: HashMap<TaskId, Entry>,
    unique: HashMap<String, TaskId>,
    dead: VecDeque<DeadTask>,
    dead_total: u64,
}

impl Inner {
    /// Moves due retries and expired leases to the ready list.
    fn promote(&mut self, now: u64) {
        // Retries first, then leases, each in due order.
        for due_at in [&mut self.delayed, &mut self.leases] {
            while let Some(&(at, id)) = due_at.first() {
                if at > now {
                    break;
                }
                due_at.pop_first();
                if let Some(e) = self.tasks.get_mut(&id) {
                    e.state = State::Ready;
                    self.ready.push_back(id);
                }
            }
        }
    }

    /// Removes a held task's state entry; returns the entry if `lease` holds it.
    fn take_lease(&mut self, lease: Lease) -> Option<&mut Entry> {
        let e = self.tasks.get_mut(&lease.id)?;
        match e.state {
            State::Leased(until) if e.task.attempt == lease.attempt => {
                self.leases.remove(&(until, lease.id));
                Some(e)
            }
            _ => None,
        }
    }

    fn remove(&mut self, id: TaskId) -> Option<Task> {
        let e = self.tasks.remove(&id)?;
        if let Some(k) = &e.task.unique_key {
            self.unique.remove(k);
        }
        Some(e.task)
    }
}

/// One named in-memory queue.
#[derive(Debug)]
pub struct MemoryQueue {
    name: Arc<str>,
    opts: MemoryOptions,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    work: Notify,
    room: Notify,
    /// Set by [`QueueAdmin::set_paused`](super::QueueAdmin::set_paused).
    paused: AtomicBool,
}

impl MemoryQueue {
    /// A new empty queue.
    pub fn new(name: &str, opts: MemoryOptions, clock: Arc<dyn Clock>) -> Result<Self, QueueError> {
        validate_name(name)?;
        if opts.capacity == 0 {
            return Err(QueueError::Config(
                "memory queue capacity must be at least 1".into(),
            ));
        }
        Ok(Self {
            name: name.into(),
            opts,
            clock,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            work: Notify::new(),
            room: Notify::new(),
            paused: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Pushes if the whole batch fits; `None` when it does not fit yet.
    fn try_push(&self, tasks: &mut Vec<NewTask>) -> Option<Vec<Pushed>> {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let new_keys = tasks
            .iter()
            .filter(|t| {
                t.unique_key
                    .as_ref()
                    .is_none_or(|k| !g.unique.contains_key(k))
            })
            .count();
        if g.tasks.len() + new_keys > self.opts.capacity {
            return None;
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks.drain(..) {
            if let Some(k) = &t.unique_key
                && let Some(&id) = g.unique.get(k)
            {
                out.push(Pushed::Duplicate(id));
                continue;
            }
            let id = g.next_id;
            g.next_id += 1;
            let state = match t.delay.filter(|d| !d.is_zero()) {
                Some(d) => {
                    let at = clock::after(now, d);
                    g.delayed.insert((at, id));
                    State::Delayed(at)
                }
                None => {
                    g.ready.push_back(id);
                    State::Ready
                }
            };
            if let Some(k) = &t.unique_key {
                g.unique.insert(k.clone(), id);
            }
            let task = Task {
                id,
                queue: self.name.clone(),
                unique_key: t.unique_key,
                payload: t.payload,
                attempt: 0,
                enqueued_at_ms: now,
            };
            g.tasks.insert(id, Entry { task, state });
            out.push(Pushed::Created(id));
        }
        Some(out)
    }
}

#[async_trait]
impl BaseQueue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, mut tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        let room = PushRoom::start(
            &self.name,
            Some(self.opts.capacity),
            self.opts.push_timeout,
            tasks.len(),
        )?;
        loop {
            // Register for a wake-up before checking, so a removal between the
            // check and the wait is not missed.
            let freed = self.room.notified();
            if let Some(out) = self.try_push(&mut tasks) {
                self.work.notify_one();
                return Ok(out);
            }
            room.wait(freed).await?;
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        let now = self.clock.now_ms();
        let until = clock::after(now, ttl);
        let mut g = self.lock();
        g.promote(now);
        let mut out = Vec::with_capacity(max.min(g.ready.len()));
        while out.len() < max {
            let Some(id) = g.ready.pop_front() else { break };
            let Some(e) = g.tasks.get_mut(&id) else {
                continue;
            };
            e.task.attempt += 1;
            e.state = State::Leased(until);
            out.push(e.task.clone());
            g.leases.insert((until, id));
        }
        Ok(out)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        let until = clock::after(self.clock.now_ms(), ttl);
        let mut g = self.lock();
        let mut held = 0;
        for &lease in leases {
            if let Some(e) = g.take_lease(lease) {
                e.state = State::Leased(until);
                g.leases.insert((until, lease.id));
                held += 1;
            }
        }
        Ok(held)
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        let now = self.clock.now_ms();
        let mut done = Settled::default();
        let mut freed = false;
        // Released tasks go back to the head of the line in their order.
        let mut released = Vec::new();
        {
            let mut g = self.lock();
            for s in settlements {
                let Some(e) = g.take_lease(s.lease) else {
                    done.lost += 1;
                    continue;
                };
                done.applied += 1;
                match s.action {
                    Action::Ack => {
                        g.remove(s.lease.id);
                        freed = true;
                    }
                    Action::RetryAt(at) => {
                        e.state = State::Delayed(at);
                        g.delayed.insert((at, s.lease.id));
                    }
                    Action::Release => {
                        e.task.attempt = e.task.attempt.saturating_sub(1);
                        e.state = State::Ready;
                        released.push(s.lease.id);
                    }
                    Action::DeadLetter(reason) => {
                        if let Some(task) = g.remove(s.lease.id) {
                            g.dead.push_back(DeadTask {
                                task,
                                reason,
                                failed_at_ms: now,
                            });
                            g.dead_total += 1;
                            if g.dead.len() > self.opts.dead_capacity {
                                g.dead.pop_front();
                            }
                        }
                        freed = true;
                    }
                }
            }
            for id in released.into_iter().rev() {
                g.ready.push_front(id);
            }
        }
        if freed {
            self.room.notify_waiters();
        }
        Ok(done)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = self.clock.now_ms();
        let g = self.lock();
        let mut s = QueueStats {
            dead: g.dead.len() as u64,
            ..QueueStats::default()
        };
        for e in g.tasks.values() {
            match e.state {
                State::Ready => s.pending += 1,
                State::Delayed(at) if at <= now => s.pending += 1,
                State::Delayed(_) => s.delayed += 1,
                State::Leased(until) if until <= now => s.pending += 1,
                State::Leased(_) => s.leased += 1,
            }
        }
        Ok(s)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        let g = self.lock();
        Ok(g.dead.iter().rev().take(limit).cloned().collect())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.work.notified()).await;
    }

    fn admin(&self) -> Option<&dyn super::QueueAdmin> {
        Some(self)
    }
}

/// A set of named memory queues sharing options and a clock.
#[derive(Debug)]
pub struct MemoryStore {
    opts: MemoryOptions,
    clock: Arc<dyn Clock>,
    queues: Handles<MemoryQueue>,
    hosts: Arc<super::hosts::LocalRegistry>,
}

impl MemoryStore {
    /// A store whose queues use these options and this clock.
    pub fn new(opts: MemoryOptions, clock: Arc<dyn Clock>) -> Self {
        Self {
            opts,
            clock,
            queues: Handles::default(),
            hosts: Arc::default(),
        }
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        let q = self.queues.get_or_open(name, || {
            MemoryQueue::new(name, self.opts.clone(), self.clock.clone())
        })?;
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        Ok(self.queues.names())
    }

    fn describe(&self) -> String {
        "memory (in this process)".into()
    }

    fn registry(&self) -> Arc<dyn super::HostRegistry> {
        self.hosts.clone()
    }
}

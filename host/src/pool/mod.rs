//! Dispatcher and worker pool: moves leased batches through a handler.
//!
//! The dispatcher takes a worker permit *before* it leases, so nothing sits
//! leased in memory waiting for a worker: in-flight tasks are bounded by
//! `max_workers x batch_size` and the backlog stays in the queue (the Argo
//! lesson). One flush mechanism decides when a batch goes out (act_runner's
//! triggers): at once when it holds `batch_size` tasks or an urgent one; when
//! its oldest task has waited `max_latency` since it was enqueued; at every
//! `interval` tick (a periodic sweep). An empty buffer never calls the
//! handler, whatever fires. Workers start on demand up
//! to `max_workers` and stop after `idle_timeout` without work, one always
//! staying (Gitea's worker group).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::{self, Clock};
use crate::queue::{Action, BaseQueue, Lease, Settle, Task};

/// What a handler decided for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: remove the task.
    Done,
    /// Run again after this delay, or after the pool's back-off if none.
    Retry(Option<Duration>),
    /// Can never succeed: dead-letter with this reason.
    Fail(String),
}

/// A whole batch failed (a trap, a time-out, a broken answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchError(pub String);

/// Handles batches of tasks; answers one outcome per task, in order.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles one batch.
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError>;
}

/// A native handler that marks every task done: the baseline in benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopHandler;

#[async_trait]
impl BatchHandler for NoopHandler {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        Ok(vec![Outcome::Done; batch.len()])
    }
}

/// Settings of one worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most tasks in one batch; a full batch goes out at once.
    pub batch_size: usize,
    /// Most batches handled at the same time.
    pub max_workers: usize,
    /// Longest a task waits in a partial batch, counted from when it was
    /// enqueued (the max-latency trigger; `debounce` is accepted as its old name).
    #[serde(with = "humantime_serde", alias = "debounce")]
    pub max_latency: Duration,
    /// Periodic sweep: whatever is buffered goes out at every tick; none if unset.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Tasks whose unique key starts with this are urgent: their batch goes
    /// out at once (act_runner's step transitions); none if unset.
    pub urgent_key_prefix: Option<String>,
    /// A worker with no batch for this long stops (one always stays).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a lease lasts; renewed while a batch runs.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Longest wait between polls of an empty queue.
    #[serde(with = "humantime_serde")]
    pub poll_interval_max: Duration,
    /// Deliveries before a failing task is dead-lettered.
    pub max_attempts: u32,
    /// Back-off between retries of a failed task.
    pub retry_backoff: Backoff,
    /// Pause before the next lease after consecutive whole-batch failures
    /// (traps, time-outs): a broken plugin then costs its neighbours little.
    pub failure_pause: Backoff,
    /// How long running batches may finish after shutdown begins.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_workers: 4,
            max_latency: Duration::from_millis(100),
            interval: None,
            urgent_key_prefix: None,
            idle_timeout: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(60),
            poll_interval_max: Duration::from_millis(500),
            max_attempts: 10,
            retry_backoff: Backoff::default(),
            failure_pause: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Checks values that would make the pool misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.max_workers == 0 {
            return Err("max_workers must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            return Err("interval must be longer than zero".into());
        }
        if self.urgent_key_prefix.as_deref() == Some("") {
            return Err("urgent_key_prefix must not be empty".into());
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(format!(
                "lease_ttl {:?} is too short (>= 100ms)",
                self.lease_ttl
            ));
        }
        Ok(())
    }
}

/// Running totals of a pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Tasks acked.
    pub done: AtomicU64,
    /// Tasks scheduled for another attempt.
    pub retried: AtomicU64,
    /// Tasks dead-lettered.
    pub dead: AtomicU64,
    /// Batches handed to the handler.
    pub batches: AtomicU64,
    /// Batches whose handler call failed as a whole.
    pub failed_batches: AtomicU64,
    /// Settlements refused because the lease had been taken over.
    pub lost_leases: AtomicU64,
    /// Queue operations that failed (the tasks come back when leases expire).
    pub queue_errors: AtomicU64,
    /// Most workers alive at once.
    pub peak_workers: AtomicU64,
    /// Batches sent because they were full.
    pub flush_full: AtomicU64,
    /// Batches sent because they held an urgent task or a flush was asked for.
    pub flush_urgent: AtomicU64,
    /// Batches sent because their oldest task reached `max_latency`.
    pub flush_latency: AtomicU64,
    /// Batches sent by the periodic sweep.
    pub flush_interval: AtomicU64,
}

/// A plain copy of [`PoolStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolSnapshot {
    /// Tasks acked.
    pub done: u64,
    /// Tasks scheduled for another attempt.
    pub retried: u64,
    /// Tasks dead-lettered.
    pub dead: u64,
    /// Batches handed to the handler.
    pub batches: u64,
    /// Batches that failed as a whole.
    pub failed_batches: u64,
    /// Settlements refused because the lease had been taken over.
    pub lost_leases: u64,
    /// Queue operations that failed.
    pub queue_errors: u64,
    /// Most workers alive at once.
    pub peak_workers: u64,
    /// Batches sent because they were full.
    pub flush_full: u64,
    /// Batches sent because they held an urgent task or a flush was asked for.
    pub flush_urgent: u64,
    /// Batches sent because their oldest task reached `max_latency`.
    pub flush_latency: u64,
    /// Batches sent by the periodic sweep.
    pub flush_interval: u64,
}

impl PoolStats {
    /// A copy of the counters.
    pub fn snapshot(&self) -> PoolSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolSnapshot {
            done: l(&self.done),
            retried: l(&self.retried),
            dead: l(&self.dead),
            batches: l(&self.batches),
            failed_batches: l(&self.failed_batches),
            lost_leases: l(&self.lost_leases),
            queue_errors: l(&self.queue_errors),
            peak_workers: l(&self.peak_workers),
            flush_full: l(&self.flush_full),
            flush_urgent: l(&self.flush_urgent),
            flush_latency: l(&self.flush_latency),
            flush_interval: l(&self.flush_interval),
        }
    }
}

struct Job {
    batch: Vec<Task>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
struct Counts {
    workers: usize,
    idle: usize,
}

struct Shared {
    queue: Arc<dyn BaseQueue>,
    handler: Arc<dyn BatchHandler>,
    cfg: PoolConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<PoolStats>,
    counts: Mutex<Counts>,
    /// Whole-batch failures in a row, reset by any batch that succeeds.
    failing: std::sync::atomic::AtomicU32,
    workers_tx: watch::Sender<usize>,
    jobs_rx: async_channel::Receiver<Job>,
    /// Stop leasing; batches not yet started go back to the queue.
    stop: CancellationToken,
    /// Abandon running batches (grace period over).
    abort: CancellationToken,
    workers: Mutex<JoinSet<()>>,
    /// Asks the dispatcher to send what it holds now.
    flush_now: tokio::sync::Notify,
}

/// A running pool: one dispatcher and its workers over one queue.
pub struct WorkerPool {
    shared: Arc<Shared>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("queue", &self.shared.queue.name())
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

impl WorkerPool {
    /// Starts a pool over `queue` calling `handler`.
    pub fn start(
        queue: Arc<dyn BaseQueue>,
        handler: Arc<dyn BatchHandler>,
        cfg: PoolConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let (jobs_tx, jobs_rx) = async_channel::bounded(cfg.max_workers);
        let shared = Arc::new(Shared {
            queue,
            handler,
            clock,
            stats: Arc::default(),
            counts: Mutex::default(),
            failing: std::sync::atomic::AtomicU32::new(0),
            workers_tx: watch::channel(0).0,
            jobs_rx,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            workers: Mutex::new(JoinSet::new()),
            flush_now: tokio::sync::Notify::new(),
            cfg,
        });
        let dispatcher = tokio::spawn(dispatch_loop(shared.clone(), jobs_tx));
        Ok(Self { shared, dispatcher })
    }

    /// The pool's counters.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.shared.stats.clone()
    }

    /// Watches the number of live workers.
    pub fn workers(&self) -> watch::Receiver<usize> {
        self.shared.workers_tx.subscribe()
    }

    /// Sends the partial batch the dispatcher holds at once (an urgent flush
    /// from inside the process); does nothing when it holds none.
    pub fn flush(&self) {
        self.shared.flush_now.notify_one();
    }

    /// The queue this pool drains.
    pub fn queue(&self) -> &Arc<dyn BaseQueue> {
        &self.shared.queue
    }

    /// Stops leasing, lets running batches finish within the grace period,
    /// returns everything else to the queue, and waits for every task.
    pub async fn shutdown(self) -> PoolSnapshot {
        let s = self.shared;
        s.stop.cancel();
        if let Err(e) = self.dispatcher.await {
            tracing::error!(queue = s.queue.name(), error = %e, "dispatcher ended abnormally");
        }
        let mut set = std::mem::take(&mut *lock(&s.workers));
        let drained = tokio::time::timeout(s.cfg.shutdown_grace, async {
            while set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                queue = s.queue.name(),
                grace = ?s.cfg.shutdown_grace,
                "grace period over: returning running batches to the queue"
            );
            s.abort.cancel();
            while set.join_next().await.is_some() {}
        }
        s.stats.snapshot()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a batch went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Full,
    Urgent,
    Latency,
    Interval,
}

async fn dispatch_loop(s: Arc<Shared>, jobs: async_channel::Sender<Job>) {
    let permits = Arc::new(Semaphore::new(s.cfg.max_workers));
    let poll = Backoff::new(Duration::from_millis(5), s.cfg.poll_interval_max);
    let error_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut empty_polls = 0u32;
    let mut errors = 0u32;
    let mut sweep = s.cfg.interval.map(|i| (i, tokio::time::Instant::now() + i));
    'outer: loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = s.stop.cancelled() => break,
        };
        // Circuit breaker: while batches keep failing as a whole, lease
        // more slowly (the failed tasks wait out their own retry back-off).
        let failing = s.failing.load(Ordering::Relaxed);
        if failing > 0 {
            tokio::select! {
                _ = tokio::time::sleep(s.cfg.failure_pause.delay(failing)) => {}
                _ = s.stop.cancelled() => break,
            }
        }
        let mut batch: Vec<Task> = Vec::new();
        // Enqueue time of the oldest buffered task, for the max-latency trigger.
        let mut oldest_ms = u64::MAX;
        let mut asked = false;
        let reason = loop {
            if s.stop.is_cancelled() {
                give_back(&s, &batch).await;
                break 'outer;
            }
            match s
                .queue
                .lease(s.cfg.batch_size - batch.len(), s.cfg.lease_ttl)
                .await
            {
                Ok(got) => {
                    errors = 0;
                    for t in &got {
                        oldest_ms = oldest_ms.min(t.enqueued_at_ms);
                        asked |= is_urgent(&s.cfg, t);
                    }
                    batch.extend(got);
                }
                Err(e) => {
                    errors += 1;
                    s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = error_backoff.delay(errors);
                    tracing::error!(queue = s.queue.name(), error = %e, retry_in = ?wait, "lease failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = s.stop.cancelled() => continue,
                    }
                }
            }
            let now = tokio::time::Instant::now();
            // A sweep tick that finds the buffer empty calls nobody; the
            // next tick is then one interval on.
            let swept = match &mut sweep {
                Some((every, next)) if *next <= now => {
                    while *next <= now {
                        *next += *every;
                    }
                    !batch.is_empty()
                }
                _ => false,
            };
            if batch.len() >= s.cfg.batch_size {
                break Flush::Full;
            }
            if asked && !batch.is_empty() {
                break Flush::Urgent;
            }
            asked = false;
            if swept {
                break Flush::Interval;
            }
            let mut wait = if batch.is_empty() {
                empty_polls = empty_polls.saturating_add(1);
                poll.delay(empty_polls)
            } else {
                empty_polls = 0;
                let age = Duration::from_millis(s.clock.now_ms().saturating_sub(oldest_ms));
                match s.cfg.max_latency.checked_sub(age) {
                    Some(left) if !left.is_zero() => left,
                    _ => break Flush::Latency,
                }
            };
            if let Some((_, next)) = sweep {
                wait = wait.min(next - now);
            }
            tokio::select! {
                _ = s.queue.wait_for_work(wait) => {}
                _ = s.flush_now.notified() => asked = true,
                _ = s.stop.cancelled() => {}
            }
        };
        empty_polls = 0;
        let counter = match reason {
            Flush::Full => &s.stats.flush_full,
            Flush::Urgent => &s.stats.flush_urgent,
            Flush::Latency => &s.stats.flush_latency,
            Flush::Interval => &s.stats.flush_interval,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if jobs
            .send(Job {
                batch,
                _permit: permit,
            })
            .await
            .is_err()
        {
            break;
        }
        spawn_worker_if_needed(&s, &jobs);
    }
    jobs.close();
}

fn is_urgent(cfg: &PoolConfig, t: &Task) -> bool {
    match (&cfg.urgent_key_prefix, &t.unique_key) {
        (Some(p), Some(k)) => k.starts_with(p.as_str()),
        _ => false,
    }
}

/// Starts a worker when queued batches outnumber idle workers.
fn spawn_worker_if_needed(s: &Arc<Shared>, jobs: &async_channel::Sender<Job>) {
    let mut c = lock(&s.counts);
    if jobs.len() > c.idle && c.workers < s.cfg.max_workers {
        c.workers += 1;
        s.workers_tx.send_replace(c.workers);
        s.stats
            .peak_workers
            .fetch_max(c.workers as u64, Ordering::Relaxed);
        let mut set = lock(&s.workers);
        while set.try_join_next().is_some() {}
        set.spawn(worker(s.clone()));
    }
}

async fn worker(s: Arc<Shared>) {
    loop {
        lock(&s.counts).idle += 1;
        let got = tokio::time::timeout(s.cfg.idle_timeout, s.jobs_rx.recv()).await;
        let job = {
            let mut c = lock(&s.counts);
            c.idle -= 1;
            match got {
                Ok(Ok(job)) => Some(job),
                // Closed and drained (shutting down), or idle while others
                // can cover: leave. The last worker stays while the pool runs.
                Ok(Err(_)) => None,
                Err(_) if c.workers > 1 && s.jobs_rx.is_empty() => None,
                Err(_) => continue,
            }
            .or_else(|| {
                c.workers -= 1;
                s.workers_tx.send_replace(c.workers);
                None
            })
        };
        match job {
            Some(job) => run_job(&s, job).await,
            None => return,
        }
    }
}

async fn run_job(s: &Shared, job: Job) {
    let batch = job.batch;
    if s.stop.is_cancelled() {
        give_back(s, &batch).await;
        return;
    }
    s.stats.batches.fetch_add(1, Ordering::Relaxed);
    let leases: Vec<Lease> = batch.iter().map(Task::lease).collect();
    let call = s.handler.handle(&batch);
    tokio::pin!(call);
    // Renew well before expiry so a long batch keeps its tasks.
    let renew_every = s.cfg.lease_ttl / 3;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let result = loop {
        tokio::select! {
            r = &mut call => break Some(r),
            _ = s.abort.cancelled() => break None,
            _ = renew.tick() => {
                if let Err(e) = s.queue.renew(&leases, s.cfg.lease_ttl).await {
                    s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(queue = s.queue.name(), error = %e, "lease renewal failed");
                }
            }
        }
    };
    let Some(result) = result else {
        give_back(s, &batch).await;
        return;
    };
    let now = s.clock.now_ms();
    let settlements: Vec<Settle> = match result {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            s.failing.store(0, Ordering::Relaxed);
            batch
                .iter()
                .zip(outcomes)
                .map(|(t, o)| settle_outcome(s, t, o, now))
                .collect()
        }
        Ok(outcomes) => {
            let e = BatchError(format!(
                "handler answered {} outcomes for a batch of {} tasks",
                outcomes.len(),
                batch.len()
            ));
            batch_failed(s, &batch, &e, now)
        }
        Err(e) => batch_failed(s, &batch, &e, now),
    };
    match s.queue.settle(settlements).await {
        Ok(r) => {
            s.stats
                .lost_leases
                .fetch_add(r.lost as u64, Ordering::Relaxed);
            if r.lost > 0 {
                tracing::warn!(
                    queue = s.queue.name(),
                    lost = r.lost,
                    "leases expired before settling; those tasks run again"
                );
            }
        }
        Err(e) => {
            s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue = s.queue.name(), error = %e, tasks = batch.len(), "settling a batch failed; its tasks run again when their leases expire");
        }
    }
}

fn batch_failed(s: &Shared, batch: &[Task], e: &BatchError, now: u64) -> Vec<Settle> {
    s.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    s.failing.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(queue = s.queue.name(), tasks = batch.len(), error = %e, "batch failed");
    batch
        .iter()
        .map(|t| retry_or_bury(s, t, None, &e.0, now))
        .collect()
}

fn settle_outcome(s: &Shared, t: &Task, o: Outcome, now: u64) -> Settle {
    match o {
        Outcome::Done => {
            s.stats.done.fetch_add(1, Ordering::Relaxed);
            Settle {
                lease: t.lease(),
                action: Action::Ack,
            }
        }
        Outcome::Retry(after) => retry_or_bury(s, t, after, "the handler asked for a retry", now),
        Outcome::Fail(reason) => {
            s.stats.dead.fetch_add(1, Ordering::Relaxed);
            Settle {
                lease: t.lease(),
                action: Action::DeadLetter(reason),
            }
        }
    }
}

/// Schedules another attempt, or dead-letters once attempts are spent.
fn retry_or_bury(s: &Shared, t: &Task, after: Option<Duration>, why: &str, now: u64) -> Settle {
    let action = if t.attempt >= s.cfg.max_attempts {
        s.stats.dead.fetch_add(1, Ordering::Relaxed);
        Action::DeadLetter(format!("gave up after {} attempts: {why}", t.attempt))
    } else {
        s.stats.retried.fetch_add(1, Ordering::Relaxed);
        let wait = after.unwrap_or_else(|| s.cfg.retry_backoff.delay(t.attempt));
        Action::RetryAt(clock::after(now, wait))
    };
    Settle {
        lease: t.lease(),
        action,
    }
}

/// Returns unstarted or abandoned tasks to the queue, this delivery not counted.
async fn give_back(s: &Shared, batch: &[Task]) {
    if batch.is_empty() {
        return;
    }
    let leases: Vec<Lease> = batch.iter().map(Task::lease).collect();
    if let Err(e) = s.queue.release(&leases).await {
        s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(queue = s.queue.name(), error = %e, tasks = leases.len(), "returning tasks failed; they come back when their leases expire");
    }
}

#[cfg(test)]
mod tests;

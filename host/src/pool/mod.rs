//! Dispatcher and worker pool: moves leased batches through a handler.
//!
//! The dispatcher takes a worker permit *before* it leases, so nothing sits
//! leased in memory waiting for a worker: in-flight tasks are bounded by
//! `max_workers x batch_size` and the backlog stays in the queue (the Argo
//! lesson). One flush mechanism decides when a batch goes out (act_runner's
//! triggers): at once when it holds `batch_size` tasks or an urgent one; when
//! its oldest task has waited `max_latency` since it was enqueued; at every
//! `interval` tick (a periodic sweep). An empty buffer never calls the
//! handler, whatever fires. Workers start on demand up to `max_workers` and
//! stop after `idle_timeout` without work, one always staying (Gitea's worker
//! group).
//!
//! Layout: this file holds the handler trait and the pool's lifecycle
//! (start, flush, shutdown); `dispatcher` leases and decides when a batch
//! goes (not while the queue is paused: `pause`); `worker` runs batches and settles their tasks; `config` and
//! `stats` hold the settings and the counters.

mod config;
mod dispatcher;
mod pause;
mod stats;
pub mod timings;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::PoolConfig;
pub use stats::{PoolSnapshot, PoolStats};

use crate::clock::Clock;
use crate::queue::{BaseQueue, Task};

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
    /// Push to first lease of each task leased.
    wait: Arc<timings::DurationHistogram>,
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
            wait: Arc::default(),
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
        let dispatcher = tokio::spawn(dispatcher::dispatch_loop(shared.clone(), jobs_tx));
        Ok(Self { shared, dispatcher })
    }

    /// The pool's counters.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.shared.stats.clone()
    }

    /// How long tasks waited from push to their first lease.
    pub fn wait_times(&self) -> Arc<timings::DurationHistogram> {
        self.shared.wait.clone()
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

    /// Reads the workers running a batch now and the most the pool runs
    /// (for the host registry).
    pub fn load_gauge(&self) -> impl Fn() -> (usize, usize) + Send + Sync + 'static {
        let s = self.shared.clone();
        move || {
            let c = lock(&s.counts);
            (c.workers.saturating_sub(c.idle), s.cfg.max_workers)
        }
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

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

use crate::queue::util::lock;

#[cfg(test)]
mod containment_tests;
#[cfg(test)]
mod pause_tests;
#[cfg(test)]
mod tests;

//! The base-queue abstraction and its backends.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`BaseQueue`] (one queue), [`QueueStore`] (a backend's named queues) and their types |
//! | `open.rs` | [`open`]: the one place a backend is chosen, from a [`BackendConfig`] |
//! | `memory.rs`, `disk/`, `redis/`, `postgres/` | the backends |
//! | `admin.rs` | [`QueueAdmin`]: operator actions (peek, dead letters, cancel, pause); each backend implements it in its own `admin` file |
//! | `util.rs` | what the backends share: locking, handle table, waiting for room |
//! | `hosts.rs` | [`HostRegistry`]: the hosts serving a store, and reclaiming a gone holder's leases |
//! | `conformance.rs` | the checks every backend passes (tests and the `conformance` feature) |
//!
//! Every backend passes the same conformance suite: push with optional
//! unique key, lease a batch for a time, settle each lease (ack, retry at a
//! time, dead-letter, release), and report its length. A leased task is not
//! removed: if its holder dies, the lease expires and the task is handed out
//! again, so a task never dies with the process that took it (as it does in
//! pop-based queues).

pub mod admin;
pub mod disk;
pub mod hosts;
#[cfg(test)]
mod hosts_checks;
pub mod memory;
mod open;
pub mod postgres;
pub mod redis;
pub(crate) mod util;
#[cfg(test)]
mod wake_checks;
mod wakes;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use self::admin::{AdminError, PeekedTask, QueueAdmin, TaskState, Which};
pub use self::hosts::{HostInfo, HostPlugin, HostRegistry};
pub use self::open::{Backend, BackendConfig, open};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Identifier of a task, unique within one queue store.
pub type TaskId = u64;

/// A task a producer hands to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewTask {
    /// Opaque bytes for the handler.
    pub payload: Vec<u8>,
    /// Pushing a key that is pending, delayed or leased is a no-op.
    pub unique_key: Option<String>,
    /// Hold the task back this long before it can be leased.
    pub delay: Option<Duration>,
}

impl NewTask {
    /// A task with this payload, no unique key and no delay.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the unique key.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets the delay before the task becomes visible.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// A new task with this id was stored.
    Created(TaskId),
    /// A task with the same unique key is still in the queue; this is its id.
    Duplicate(TaskId),
}

impl Pushed {
    /// The id of the stored or the already-present task.
    pub fn id(self) -> TaskId {
        match self {
            Pushed::Created(id) | Pushed::Duplicate(id) => id,
        }
    }
}

/// Proof of holding a task: its id and the delivery number it was leased at.
///
/// A later lease of the same task has a higher attempt, so a holder whose
/// lease expired and was taken over cannot settle the task any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The leased task.
    pub id: TaskId,
    /// The delivery this lease belongs to (1 for the first).
    pub attempt: u32,
}

/// A task handed out under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Task id.
    pub id: TaskId,
    /// Name of the queue it came from.
    pub queue: Arc<str>,
    /// Unique key given at push time.
    pub unique_key: Option<String>,
    /// Opaque bytes.
    pub payload: Vec<u8>,
    /// Delivery number: 1 the first time, incremented by every lease.
    pub attempt: u32,
    /// When the task was pushed, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

impl Task {
    /// The lease under which this task was handed out.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            attempt: self.attempt,
        }
    }
}

/// What to do with a leased task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Done: remove the task (and free its unique key).
    Ack,
    /// Make the task visible again at this time (ms since the epoch).
    RetryAt(u64),
    /// Move the task to the dead-letter set with a reason.
    DeadLetter(String),
    /// Give the task back untouched: visible now, this delivery not counted.
    Release,
}

/// One settlement of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// The lease being settled.
    pub lease: Lease,
    /// What to do with its task.
    pub action: Action,
}

/// How many settlements took effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Settlements applied.
    pub applied: usize,
    /// Settlements refused because the lease was no longer held.
    pub lost: usize,
}

/// Counts of a queue's tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Visible now and waiting for a worker (includes expired leases).
    pub pending: u64,
    /// Waiting for a retry or delay time.
    pub delayed: u64,
    /// Held under a valid lease.
    pub leased: u64,
    /// Dead-lettered.
    pub dead: u64,
}

impl QueueStats {
    /// Tasks still to be done: pending + delayed + leased.
    pub fn len(&self) -> u64 {
        self.pending + self.delayed + self.leased
    }

    /// True when no task is left to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dead-lettered task and why it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The task as last leased.
    pub task: Task,
    /// The reason given when it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered, ms since the epoch.
    pub failed_at_ms: u64,
}

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The bounded queue stayed full for the whole push timeout.
    #[error("queue {queue:?} is full ({capacity} tasks) and stayed full for {waited:?}")]
    Full {
        /// Queue name.
        queue: String,
        /// Its capacity.
        capacity: usize,
        /// How long the push waited for room.
        waited: Duration,
    },
    /// A push batch larger than the whole queue.
    #[error("queue {queue:?} holds at most {capacity} tasks; a batch of {batch} can never fit")]
    BatchTooLarge {
        /// Queue name.
        queue: String,
        /// Its capacity.
        capacity: usize,
        /// Size of the refused batch.
        batch: usize,
    },
    /// The on-disk store failed.
    #[error("disk queue store {path}: {message}")]
    Disk {
        /// Database file.
        path: String,
        /// What SQLite said.
        message: String,
    },
    /// The store's data is damaged: nothing more is read or written, and
    /// the host stops (retrying cannot heal it).
    #[error("disk queue store {path}: {message}")]
    Corrupt {
        /// Database file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The Redis store failed or is unreachable.
    #[error("redis queue store {url}: {message}")]
    Redis {
        /// Server URL, without password.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The PostgreSQL store failed or is unreachable.
    #[error("postgres queue store {url}: {message}")]
    Postgres {
        /// Server URL, without password.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The queue was closed.
    #[error("queue store {0} is closed")]
    Closed(String),
    /// A configuration value the backend cannot work with.
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

/// The interface every queue backend implements.
#[async_trait]
pub trait BaseQueue: Send + Sync + std::fmt::Debug + 'static {
    /// The queue's name.
    fn name(&self) -> &str;

    /// Stores tasks; each either creates a task or names the pending duplicate.
    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError>;

    /// Leases up to `max` visible tasks for `ttl`, oldest first.
    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError>;

    /// Extends held leases to `ttl` from now; returns how many were still held.
    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError>;

    /// Applies settlements of held leases, atomically where the backend can.
    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError>;

    /// Counts of tasks by state.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// The newest dead-lettered tasks, up to `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError>;

    /// The operator actions on this queue; `None` for wrappers and test
    /// doubles that have none (such a queue is never paused).
    fn admin(&self) -> Option<&dyn QueueAdmin> {
        None
    }

    /// Waits until work may be available or `timeout` passes.
    ///
    /// Backends that see pushes in-process wake early; others just wait.
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    /// Stores one task.
    async fn push(&self, task: NewTask) -> Result<Pushed, QueueError> {
        let mut out = self.push_batch(vec![task]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Config("backend answered an empty push".into()))
    }

    /// Marks held tasks done.
    async fn ack(&self, leases: &[Lease]) -> Result<Settled, QueueError> {
        self.settle(settle_all(leases, Action::Ack)).await
    }

    /// Makes a held task visible again at `at_ms`.
    async fn retry(&self, lease: Lease, at_ms: u64) -> Result<Settled, QueueError> {
        self.settle(settle_all(&[lease], Action::RetryAt(at_ms)))
            .await
    }

    /// Moves a held task to the dead-letter set.
    async fn dead_letter(&self, lease: Lease, reason: &str) -> Result<Settled, QueueError> {
        self.settle(settle_all(&[lease], Action::DeadLetter(reason.to_owned())))
            .await
    }

    /// Gives held tasks back without counting this delivery.
    async fn release(&self, leases: &[Lease]) -> Result<Settled, QueueError> {
        self.settle(settle_all(leases, Action::Release)).await
    }

    /// Tasks still to be done.
    async fn len(&self) -> Result<u64, QueueError> {
        Ok(self.stats().await?.len())
    }

    /// True when no task is left to do.
    async fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len().await? == 0)
    }
}

/// The same action for every lease.
pub fn settle_all(leases: &[Lease], action: Action) -> Vec<Settle> {
    leases
        .iter()
        .map(|&lease| Settle {
            lease,
            action: action.clone(),
        })
        .collect()
}

/// A backend that opens named queues: one per process and data store.
#[async_trait]
pub trait QueueStore: Send + Sync + std::fmt::Debug + 'static {
    /// The queue with this name, created on first use.
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError>;

    /// Names of queues that hold tasks or dead letters.
    async fn known_queues(&self) -> Result<Vec<String>, QueueError>;

    /// Checks that the backend answers; local backends always do.
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Finishes what was handed to the backend and stops its background work.
    async fn close(&self) {}

    /// Resolves with the error once the store has failed for good (its data
    /// is damaged); the host then stops. Never resolves for a store that
    /// can recover by retrying.
    async fn failed(&self) -> QueueError {
        std::future::pending().await
    }

    /// Where the queues are, for people: a file path, a URL without password.
    fn describe(&self) -> String;

    /// The hosts serving this store's queues (see [`hosts`]). Persistent
    /// backends override it; the default knows nothing beyond this process.
    fn registry(&self) -> Arc<dyn HostRegistry> {
        Arc::new(hosts::LocalRegistry::default())
    }
}

/// Checks a queue name: non-empty, printable, at most 200 bytes.
pub fn validate_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(QueueError::Config(format!(
            "queue name {name:?} must be 1-200 bytes with no control characters"
        )));
    }
    Ok(())
}

//! Operator actions on one queue, on every backend: look at tasks without
//! taking them (peek), retry or purge dead letters, cancel a waiting task,
//! run a delayed one now, and pause or resume the queue.
//!
//! Every backend's queue implements [`QueueAdmin`] (beside its
//! [`BaseQueue`](super::BaseQueue)); reach it through
//! [`BaseQueue::admin`](super::BaseQueue::admin). The conformance suite
//! (`conformance/admin.rs`) proves the backends answer alike.
//!
//! Paging: [`QueueAdmin::peek`] lists tasks in ascending id order (push
//! order), starting after the cursor id, so a page costs an index range
//! read on the persistent backends, however many dead letters there are.

use async_trait::async_trait;

use super::{QueueError, TaskId};

/// The states a task can be peeked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Visible now (includes due retries and expired leases).
    Pending,
    /// Waiting for its delay or retry time.
    Delayed,
    /// Held under a valid lease.
    Leased,
    /// Dead-lettered.
    Dead,
}

impl TaskState {
    /// The lower-case name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Delayed => "delayed",
            TaskState::Leased => "leased",
            TaskState::Dead => "dead",
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(TaskState::Pending),
            "delayed" => Ok(TaskState::Delayed),
            "leased" => Ok(TaskState::Leased),
            "dead" => Ok(TaskState::Dead),
            other => Err(format!(
                "unknown task state {other:?}: pending, delayed, leased or dead"
            )),
        }
    }
}

/// Why a task died, for peeked dead letters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadInfo {
    /// The reason given when it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered, ms since the epoch.
    pub failed_at_ms: u64,
}

/// One task as seen by [`QueueAdmin::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedTask {
    /// Task id.
    pub id: TaskId,
    /// Unique key given at push time.
    pub unique_key: Option<String>,
    /// Deliveries so far (0 for a task never leased).
    pub attempt: u32,
    /// When the task was pushed, ms since the epoch.
    pub enqueued_at_ms: u64,
    /// Pending: when it became visible (may be in the past); delayed: when
    /// it becomes visible; leased: when the lease expires; dead: `None`.
    pub at_ms: Option<u64>,
    /// Opaque bytes.
    pub payload: Vec<u8>,
    /// Set for dead letters only.
    pub dead: Option<DeadInfo>,
}

/// One page of a peek, as a backend reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekPage {
    /// The state the tasks are in.
    pub state: TaskState,
    /// Only ids above this one (0: from the first).
    pub after: TaskId,
    /// At most this many, from 1 to [`MAX_PEEK`].
    pub limit: usize,
}

/// Which dead letters an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// Every dead letter of the queue.
    All,
    /// Only these ids (ids not dead in this queue are skipped).
    Ids(Vec<TaskId>),
}

/// Errors of operator actions.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The backend failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The task is held by a worker; it cannot be cancelled or moved now.
    #[error(
        "task {id} of queue {queue:?} is leased by a worker; it can be cancelled only while pending or delayed"
    )]
    Leased {
        /// Queue name.
        queue: String,
        /// Task id.
        id: TaskId,
    },
    /// No pending or delayed (for `run_now`: delayed) task has this id.
    #[error("queue {queue:?} has no {wanted} task {id}")]
    NotFound {
        /// Queue name.
        queue: String,
        /// Task id.
        id: TaskId,
        /// The state(s) looked in, for the message.
        wanted: &'static str,
    },
}

impl AdminError {
    /// Task `id` of `queue` is held by a worker.
    pub(crate) fn leased(queue: &str, id: TaskId) -> Self {
        AdminError::Leased {
            queue: queue.to_owned(),
            id,
        }
    }

    /// `queue` has no task `id` in the `wanted` state(s).
    pub(crate) fn not_found(queue: &str, id: TaskId, wanted: &'static str) -> Self {
        AdminError::NotFound {
            queue: queue.to_owned(),
            id,
            wanted,
        }
    }
}

/// Most tasks one peek returns.
pub const MAX_PEEK: usize = 1_000;

/// Operator actions on one queue. Every method is one backend request (or a
/// bounded series of them), safe to call while hosts run.
#[async_trait]
pub trait QueueAdmin: Send + Sync + std::fmt::Debug {
    /// Tasks in `state` with id greater than `after`, ascending by id, at
    /// most `limit` (capped at [`MAX_PEEK`]); nothing is leased or changed.
    async fn peek(
        &self,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<PeekedTask>, AdminError> {
        let limit = limit.min(MAX_PEEK);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = after.unwrap_or(0);
        self.peek_page(PeekPage {
            state,
            after,
            limit,
        })
        .await
    }

    /// The backend's part of [`peek`](Self::peek), which has capped the
    /// page and read the cursor.
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError>;

    /// Moves dead letters back to pending with their delivery count reset
    /// to 0; returns how many moved. A dead letter whose unique key a live
    /// task now holds stays dead.
    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError>;

    /// Deletes dead letters; returns how many were deleted.
    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError>;

    /// Deletes a pending or delayed task (freeing its unique key); a leased
    /// one is refused with [`AdminError::Leased`].
    async fn cancel(&self, id: TaskId) -> Result<(), AdminError>;

    /// Makes a delayed task visible now.
    async fn run_now(&self, id: TaskId) -> Result<(), AdminError>;

    /// Pauses (`true`) or resumes (`false`) the queue: durable in the
    /// backend; worker pools stop leasing from a paused queue within about
    /// a second. Pushes are still accepted.
    async fn set_paused(&self, paused: bool) -> Result<(), AdminError>;

    /// Whether the queue is paused (one backend read).
    async fn is_paused(&self) -> Result<bool, AdminError>;
}

/// How long the oldest pending task (lowest id) has waited since it was
/// pushed, in seconds; `None` when nothing is pending.
pub async fn oldest_pending_age(
    admin: &dyn QueueAdmin,
    now_ms: u64,
) -> Result<Option<f64>, AdminError> {
    let first = admin.peek(TaskState::Pending, None, 1).await?;
    Ok(first
        .first()
        .map(|t| now_ms.saturating_sub(t.enqueued_at_ms) as f64 / 1000.0))
}

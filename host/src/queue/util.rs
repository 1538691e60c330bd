//! Helpers every backend shares: poison-tolerant locking, the per-store
//! table of queue handles, and the wait for room of a bounded push.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::QueueError;

/// Locks `m`, taking over a lock a panicking thread left poisoned.
///
/// Every mutex in the backends guards plain data that a panic cannot leave
/// half-updated in a way later calls would trip on, so serving on is safe.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The queue handles a store has opened, one per name.
#[derive(Debug)]
pub(crate) struct Handles<Q>(Mutex<HashMap<String, Arc<Q>>>);

impl<Q> Default for Handles<Q> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<Q> Handles<Q> {
    /// The handle of queue `name`, opened with `open` on first use.
    pub(crate) fn get_or_open(
        &self,
        name: &str,
        open: impl FnOnce() -> Result<Q, QueueError>,
    ) -> Result<Arc<Q>, QueueError> {
        let mut qs = lock(&self.0);
        if let Some(q) = qs.get(name) {
            return Ok(q.clone());
        }
        let q = Arc::new(open()?);
        qs.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    /// Names of the queues opened so far, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = lock(&self.0).keys().cloned().collect();
        names.sort();
        names
    }
}

/// The capacity check and deadline of one push into a bounded queue.
#[derive(Debug)]
pub(crate) struct PushRoom<'a> {
    queue: &'a str,
    capacity: Option<usize>,
    timeout: Duration,
    deadline: Instant,
}

impl<'a> PushRoom<'a> {
    /// Starts a push of `batch` tasks, refusing a batch larger than the
    /// whole queue; the push may wait for room up to `timeout` from now.
    pub(crate) fn start(
        queue: &'a str,
        capacity: Option<usize>,
        timeout: Duration,
        batch: usize,
    ) -> Result<Self, QueueError> {
        if let Some(cap) = capacity
            && batch > cap
        {
            return Err(QueueError::BatchTooLarge {
                queue: queue.to_owned(),
                capacity: cap,
                batch,
            });
        }
        Ok(Self {
            queue,
            capacity,
            timeout,
            deadline: crate::clock::deadline_in(timeout),
        })
    }

    /// After an attempt found the queue full: waits for `signal` (room may
    /// have been made) before the next attempt, or fails with
    /// [`QueueError::Full`] once the push timeout has passed.
    pub(crate) async fn wait(&self, signal: impl Future<Output = ()>) -> Result<(), QueueError> {
        tokio::time::timeout_at(self.deadline, signal)
            .await
            .map_err(|_| self.full())
    }

    fn full(&self) -> QueueError {
        QueueError::Full {
            queue: self.queue.to_owned(),
            capacity: self.capacity.unwrap_or(0),
            waited: self.timeout,
        }
    }
}

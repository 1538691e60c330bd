//! The wake-ups of a store shared by several hosts: one [`Notify`] per queue
//! that idle waiters sleep on, and the one background task that rings them
//! when another host pushes (Redis pub/sub, PostgreSQL `LISTEN`). The
//! backends differ only in what that task listens to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::util::lock;

/// Per-queue wake-ups and the listener task that rings them.
#[derive(Default)]
pub(crate) struct Wakes {
    table: Mutex<HashMap<String, Arc<Notify>>>,
    listener: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl std::fmt::Debug for Wakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakes").finish_non_exhaustive()
    }
}

impl Wakes {
    /// The wake-up of queue `name`.
    pub(crate) fn of(&self, name: &str) -> Arc<Notify> {
        lock(&self.table)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Wakes one waiter of every queue (after a reconnect: whatever was
    /// pushed while nobody listened is looked for again).
    pub(crate) fn all(&self) {
        for n in lock(&self.table).values() {
            n.notify_one();
        }
    }

    /// Starts the listener with `start` unless one runs; `start` gets the
    /// token that stops it.
    pub(crate) fn start_once(&self, start: impl FnOnce(CancellationToken) -> JoinHandle<()>) {
        let mut l = lock(&self.listener);
        if l.is_none() {
            let stop = CancellationToken::new();
            let task = start(stop.clone());
            *l = Some((stop, task));
        }
    }

    /// Stops the listener and waits for it.
    pub(crate) async fn stop(&self) {
        let listener = lock(&self.listener).take();
        if let Some((stop, task)) = listener {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Asks the listener to stop without waiting (for `Drop`).
    pub(crate) fn cancel(&self) {
        if let Some((stop, _)) = lock(&self.listener).as_ref() {
            stop.cancel();
        }
    }
}

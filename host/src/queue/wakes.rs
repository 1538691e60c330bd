//! The wake-ups of a store shared by several hosts: one [`Notify`] per queue
//! that idle waiters sleep on, and the one background task that rings them
//! when another host pushes (Redis pub/sub, PostgreSQL `LISTEN`). The
//! backends differ only in what that task listens to.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::util::lock;

/// Per-queue wake-ups and the listener task that rings them.
pub(crate) struct Wakes {
    table: Mutex<HashMap<String, Arc<Notify>>>,
    listener: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// Whether the listener is connected now.
    listening: watch::Sender<bool>,
}

impl Default for Wakes {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
            listener: Mutex::default(),
            listening: watch::channel(false).0,
        }
    }
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

    /// The listener connected: reports it, and wakes one waiter of every
    /// queue, so whatever was pushed while nobody listened is looked for.
    pub(crate) fn connected(&self) {
        self.listening.send_replace(true);
        for n in lock(&self.table).values() {
            n.notify_one();
        }
    }

    /// The listener lost its connection (waiters poll meanwhile).
    pub(crate) fn disconnected(&self) {
        self.listening.send_replace(false);
    }

    /// Whether the listener is connected, as it changes.
    pub(crate) fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    /// Spawns `listen` unless a listener runs. It gets the store's shared
    /// state weakly (it must not keep a dropped store alive) and the token
    /// that stops it.
    pub(crate) fn start_once<S, F>(
        &self,
        shared: &Arc<S>,
        listen: fn(Weak<S>, CancellationToken) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut l = lock(&self.listener);
        if l.is_none() {
            let stop = CancellationToken::new();
            let task = tokio::spawn(listen(Arc::downgrade(shared), stop.clone()));
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

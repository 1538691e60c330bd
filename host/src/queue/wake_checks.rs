//! Checks of the wake-ups between hosts that share a store (Redis,
//! PostgreSQL), used by both backends' wake-up tests.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{BaseQueue, NewTask};

/// Longer than any test runs: a wait that ends was woken.
const LONG: Duration = Duration::from_secs(3600);

/// A host waiting for work on `q`, in a task that ends when it is woken.
pub(crate) fn spawn_wait(q: &Arc<dyn BaseQueue>) -> JoinHandle<()> {
    let q = q.clone();
    tokio::spawn(async move { q.wait_for_work(LONG).await })
}

/// Expects `waiter` to be woken within a minute; `what` says by what.
pub(crate) async fn woken(waiter: JoinHandle<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .unwrap_or_else(|_| panic!("{what} did not wake the waiting host"))
        .expect("the waiting task");
}

/// Once `waiting`'s listener is back after a server restart, a push on
/// `pushing` wakes a host waiting on `waiting`. The push is retried until
/// the server takes it: the store replaces its lost connections on use.
pub(crate) async fn a_push_after_the_restart_wakes_the_waiting_host(
    waiting: &Arc<dyn BaseQueue>,
    pushing: &Arc<dyn BaseQueue>,
) {
    // Reconnecting wakes every waiter once; use that permit up.
    waiting.wait_for_work(Duration::from_millis(1)).await;
    let waiter = spawn_wait(waiting);
    while pushing.push(NewTask::new("again")).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    woken(waiter, "a push after the restart").await;
}

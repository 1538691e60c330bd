//! The pause gate: whether an operator paused the queue (see
//! [`QueueAdmin::set_paused`](crate::queue::QueueAdmin::set_paused)), read
//! from the backend at most once per [`CHECK_EVERY`], so a paused queue
//! stops leasing and a resumed one starts again within a second without a
//! backend round trip per lease.

use std::time::Duration;

use tokio::time::Instant;

use crate::queue::BaseQueue;

/// How long a read of the pause flag is trusted: half the one-second
/// promise, leaving room for the read itself and the poll wait.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The dispatcher's cached view of the queue's pause flag.
#[derive(Debug, Default)]
pub(super) struct PauseGate {
    /// When the flag was last read, and what it said.
    checked: Option<(Instant, bool)>,
}

impl PauseGate {
    /// Whether the queue is paused, reading the backend when the cached
    /// answer is older than [`CHECK_EVERY`]. A failed read keeps the last
    /// answer (a backend that is down fails the lease call anyway).
    pub(super) async fn paused(&mut self, queue: &dyn BaseQueue) -> bool {
        let now = Instant::now();
        let last = self.checked.map(|(_, p)| p);
        if let Some((at, p)) = self.checked
            && now < at + CHECK_EVERY
        {
            return p;
        }
        let Some(admin) = queue.admin() else {
            return false;
        };
        let paused = match admin.is_paused().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(queue = queue.name(), error = %e, "cannot read the pause flag");
                last.unwrap_or(false)
            }
        };
        match (last.unwrap_or(false), paused) {
            (false, true) => tracing::info!(queue = queue.name(), "queue paused: not leasing"),
            (true, false) => tracing::info!(queue = queue.name(), "queue resumed"),
            _ => {}
        }
        self.checked = Some((now, paused));
        paused
    }

    /// How long until the flag is read again.
    pub(super) fn next_check_in(&self) -> Duration {
        match self.checked {
            Some((at, _)) => (at + CHECK_EVERY).saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }
}

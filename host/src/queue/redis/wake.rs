//! The pub/sub wake listener: idle hosts wait on Redis instead of polling.
//!
//! One `PSUBSCRIBE` connection per store, started by the first wait, wakes a
//! queue's waiter whenever a push or release on any host made tasks ready
//! there. Waits keep their time-outs, so work that falls due without a
//! message (retries, expired leases) and wakes lost while the subscription
//! was down are still found by the worker pool's back-off polling.

use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Shared, keys};
use crate::backoff::Reconnect;

impl Shared {
    /// Starts the wake-up listener unless it runs.
    pub(super) fn ensure_listening(self: &Arc<Self>) {
        self.wakes.start_once(self, listen);
    }
}

/// Subscribes to every queue's wake channel and wakes its waiter on each
/// message. Resubscribes with back-off after a lost connection; meanwhile
/// waiters fall back to their time-outs, so a lost wake-up only delays,
/// never loses, work.
async fn listen(shared: Weak<Shared>, stop: CancellationToken) {
    let mut reconnect = Reconnect::new();
    loop {
        // Each attempt after a failure tries the next node of the URL.
        let Some((client, timeout)) = shared.upgrade().map(|s| {
            (
                s.pubsub[reconnect.failures() as usize % s.pubsub.len()].clone(),
                s.opts.connect_timeout,
            )
        }) else {
            return;
        };
        let connect = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(keys::WAKE_PATTERN).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(timeout, connect) => r,
        };
        match connected {
            Ok(Ok(mut ps)) => {
                reconnect.connected();
                if let Some(s) = shared.upgrade() {
                    s.wakes.connected();
                }
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Some(s) = shared.upgrade() else { return };
                    if let Some(name) = keys::queue_of_wake_channel(msg.get_channel_name()) {
                        s.wakes.of(name).notify_one();
                    }
                }
                if let Some(s) = shared.upgrade() {
                    s.wakes.disconnected();
                }
            }
            Ok(Err(e)) => {
                reconnect.failed();
                tracing::debug!(error = %e, "redis wake-up listener cannot subscribe; waiters poll meanwhile");
            }
            Err(_) => reconnect.failed(),
        }
        if !reconnect.wait(&stop).await {
            return;
        }
    }
}

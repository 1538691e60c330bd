//! The `LISTEN` wake listener: idle hosts wait on PostgreSQL instead of polling.
//!
//! One connection per store, outside the pool and started by the first
//! wait, listens on `<schema>.wake`; each notification (payload: a queue
//! name) wakes that queue's waiter. Waits keep their time-outs, so work
//! that falls due without a notification (retries, expired leases) and
//! notifications lost while the connection was down are still found by the
//! worker pool's back-off polling.

use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{Shared, channel};
use crate::backoff::Reconnect;

impl Shared {
    /// Starts the wake-up listener unless it runs.
    pub(super) fn ensure_listening(self: &Arc<Self>) {
        self.wakes.start_once(self, listen);
    }
}

/// Listens and wakes waiters; reconnects with back-off after a lost
/// connection, meanwhile waiters fall back to their time-outs.
async fn listen(shared: Weak<Shared>, stop: CancellationToken) {
    let mut reconnect = Reconnect::new();
    loop {
        let Some((config, schema)) = shared
            .upgrade()
            .map(|s| (s.config.clone(), s.opts.schema.clone()))
        else {
            return;
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = config.connect(tokio_postgres::NoTls) => r,
        };
        match connected {
            Ok((client, mut connection)) => {
                // The connection delivers notifications as it is polled:
                // a task drives it and forwards them.
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(m)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = m
                            && tx.send(n.payload().to_owned()).is_err()
                        {
                            return;
                        }
                    }
                });
                let sql = format!("LISTEN \"{}\"", channel(&schema));
                match client.batch_execute(&sql).await {
                    Ok(()) => {
                        reconnect.connected();
                        if let Some(s) = shared.upgrade() {
                            s.wakes.connected();
                        }
                        loop {
                            let name = tokio::select! {
                                _ = stop.cancelled() => { driver.abort(); return; }
                                m = rx.recv() => m,
                            };
                            let Some(name) = name else { break };
                            let Some(s) = shared.upgrade() else {
                                driver.abort();
                                return;
                            };
                            s.wakes.of(&name).notify_one();
                        }
                        if let Some(s) = shared.upgrade() {
                            s.wakes.disconnected();
                        }
                    }
                    Err(e) => {
                        reconnect.failed();
                        tracing::debug!(error = %e, "postgres wake-up listener cannot LISTEN; waiters poll meanwhile");
                    }
                }
                driver.abort();
            }
            Err(e) => {
                reconnect.failed();
                tracing::debug!(error = %e, "postgres wake-up listener cannot connect; waiters poll meanwhile");
            }
        }
        if !reconnect.wait(&stop).await {
            return;
        }
    }
}

//! Polling sources: the host asks a source for work and enqueues it.
//!
//! One [`Poller`] per source per host (act_runner #822: not one per worker
//! slot). It asks for no more than the room left under `capacity`
//! (outstanding = pending + delayed + leased tasks of the target queue). An
//! empty or failed poll backs off (`base x 2^(n-1)`, capped at
//! `poll_interval_max`, +-20 % jitter) so idle sources cost almost nothing
//! and do not poll in step after an outage; a poll that returns work resets
//! the back-off and polls again at once (act_runner's fetch-first).
//!
//! This module knows only the [`Source`] trait; components of the
//! `source-plugin` world implement it in `plugin`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::queue::{BaseQueue, NewTask};

/// Something that hands out tasks when asked.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Fetches at most `max` new tasks; an empty list means none now.
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String>;
}

/// Settings of one poller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Wait after the first empty or failed poll.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait between polls.
    #[serde(with = "humantime_serde")]
    pub poll_interval_max: Duration,
    /// Fraction of each wait added or removed at random.
    pub jitter: f64,
    /// Most outstanding tasks of the target queue; polling pauses at this.
    pub capacity: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            poll_interval_max: Duration::from_secs(60),
            jitter: 0.2,
            capacity: 3,
        }
    }
}

impl SourceConfig {
    /// The back-off between empty polls.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.poll_interval,
            max: self.poll_interval_max,
            jitter: self.jitter,
        }
    }

    /// Checks values that would make the poller misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_interval.is_zero() {
            return Err("poll_interval must be longer than zero".into());
        }
        if self.poll_interval_max < self.poll_interval {
            return Err(format!(
                "poll_interval_max {:?} is shorter than poll_interval {:?}",
                self.poll_interval_max, self.poll_interval
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!("jitter {} must be in [0, 1)", self.jitter));
        }
        if self.capacity == 0 {
            return Err("capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// Counters of a poller.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Polls made.
    pub polls: AtomicU64,
    /// Polls that returned tasks which were enqueued.
    pub with_tasks: AtomicU64,
    /// Polls that returned nothing.
    pub empty: AtomicU64,
    /// Polls that failed, or whose tasks could not be enqueued.
    pub failed: AtomicU64,
    /// Tasks enqueued.
    pub enqueued: AtomicU64,
}

/// A running poller: one source feeding one queue.
#[derive(Debug)]
pub struct Poller {
    stats: Arc<PollerStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Starts polling `source` into `queue`.
    pub fn start(
        source: Arc<dyn Source>,
        queue: Arc<dyn BaseQueue>,
        cfg: SourceConfig,
    ) -> Result<Self, String> {
        cfg.validate()?;
        let stats = Arc::new(PollerStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(poll_loop(source, queue, cfg, stats.clone(), stop.clone()));
        Ok(Self { stats, stop, task })
    }

    /// The poller's counters.
    pub fn stats(&self) -> &Arc<PollerStats> {
        &self.stats
    }

    /// Stops polling (a poll under way finishes and is enqueued) and waits.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "poller ended abnormally");
        }
    }
}

async fn poll_loop(
    source: Arc<dyn Source>,
    queue: Arc<dyn BaseQueue>,
    cfg: SourceConfig,
    stats: Arc<PollerStats>,
    stop: CancellationToken,
) {
    let backoff = cfg.backoff();
    let mut misses = 0u32;
    while !stop.is_cancelled() {
        let outstanding = match queue.stats().await {
            Ok(s) => usize::try_from(s.len()).unwrap_or(usize::MAX),
            Err(e) => {
                tracing::warn!(queue = queue.name(), error = %e, "cannot read queue size; polling waits");
                cfg.capacity
            }
        };
        let room = cfg.capacity.saturating_sub(outstanding);
        if room == 0 {
            // Full: look again when work is done, at the base interval at most.
            tokio::select! {
                _ = queue.wait_for_work(cfg.poll_interval) => {}
                _ = stop.cancelled() => {}
            }
            continue;
        }
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let got = source.poll(room).await;
        match got {
            Ok(mut tasks) if !tasks.is_empty() => {
                tasks.truncate(room);
                let n = tasks.len() as u64;
                match queue.push_batch(tasks).await {
                    Ok(_) => {
                        stats.enqueued.fetch_add(n, Ordering::Relaxed);
                        stats.with_tasks.fetch_add(1, Ordering::Relaxed);
                        misses = 0;
                        continue;
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(queue = queue.name(), error = %e, tasks = n, "enqueueing polled tasks failed");
                    }
                }
            }
            Ok(_) => {
                stats.empty.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(queue = queue.name(), error = %e, "poll failed");
            }
        }
        misses = misses.saturating_add(1);
        let wait = backoff.delay(misses);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests;

//! Settings of one worker pool.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// The longest duration a pool setting may have.
pub const MAX_TIMER: Duration = Duration::from_secs(366 * 86_400);

/// Settings of one worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most tasks in one batch; a full batch goes out at once.
    pub batch_size: usize,
    /// Most batches handled at the same time.
    pub max_workers: usize,
    /// Longest a task waits in a partial batch, counted from when it was
    /// enqueued (the max-latency trigger; `debounce` is accepted as its old name).
    #[serde(with = "humantime_serde", alias = "debounce")]
    pub max_latency: Duration,
    /// Periodic sweep: whatever is buffered goes out at every tick; none if unset.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Tasks whose unique key starts with this are urgent: their batch goes
    /// out at once (act_runner's step transitions); none if unset.
    pub urgent_key_prefix: Option<String>,
    /// A worker with no batch for this long stops (one always stays).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a lease lasts; renewed while a batch runs.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Longest wait between polls of an empty queue.
    #[serde(with = "humantime_serde")]
    pub poll_interval_max: Duration,
    /// Deliveries before a failing task is dead-lettered.
    pub max_attempts: u32,
    /// Back-off between retries of a failed task.
    pub retry_backoff: Backoff,
    /// Pause before the next lease after consecutive whole-batch failures
    /// (traps, time-outs): a broken plugin then costs its neighbours little.
    pub failure_pause: Backoff,
    /// A batch that fails as a whole is called again as two halves, down to
    /// single tasks, so only the task that breaks it spends attempts.
    pub bisect: bool,
    /// Most payload bytes in one batch (the first task always goes), kept
    /// well under the plugin's memory limit.
    pub max_batch_bytes: usize,
    /// How long running batches may finish after shutdown begins.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_workers: 4,
            max_latency: Duration::from_millis(100),
            interval: None,
            urgent_key_prefix: None,
            idle_timeout: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(60),
            poll_interval_max: Duration::from_millis(500),
            max_attempts: 10,
            retry_backoff: Backoff::default(),
            failure_pause: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(10),
            bisect: true,
            max_batch_bytes: 16 << 20,
        }
    }
}

impl PoolConfig {
    /// Checks values that would make the pool misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.max_workers == 0 {
            return Err("max_workers must be at least 1".into());
        }
        if self.max_batch_bytes == 0 {
            return Err("max_batch_bytes must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            return Err("interval must be longer than zero".into());
        }
        if self.urgent_key_prefix.as_deref() == Some("") {
            return Err("urgent_key_prefix must not be empty".into());
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(format!(
                "lease_ttl {:?} is too short (>= 100ms)",
                self.lease_ttl
            ));
        }
        // Timers are set from these; a value from a typo (years of years)
        // must be refused here, not overflow a clock later.
        let timers = [
            ("max_latency", Some(self.max_latency)),
            ("interval", self.interval),
            ("idle_timeout", Some(self.idle_timeout)),
            ("lease_ttl", Some(self.lease_ttl)),
            ("poll_interval_max", Some(self.poll_interval_max)),
            ("shutdown_grace", Some(self.shutdown_grace)),
            ("retry_backoff.max", Some(self.retry_backoff.max)),
            ("failure_pause.max", Some(self.failure_pause.max)),
        ];
        for (field, value) in timers {
            if let Some(v) = value.filter(|v| *v > MAX_TIMER) {
                return Err(format!(
                    "{field} {} is longer than {} (the longest timer the pool sets)",
                    humantime::format_duration(v),
                    humantime::format_duration(MAX_TIMER)
                ));
            }
        }
        // A batch held longer than its lease is handed out again while the
        // first holder still buffers it: the same task twice in one batch.
        for (field, value) in [
            ("max_latency", Some(self.max_latency)),
            ("interval", self.interval),
        ] {
            if let Some(v) = value.filter(|v| *v >= self.lease_ttl) {
                return Err(format!(
                    "{field} {} must be shorter than lease_ttl {}",
                    humantime::format_duration(v),
                    humantime::format_duration(self.lease_ttl)
                ));
            }
        }
        Ok(())
    }
}

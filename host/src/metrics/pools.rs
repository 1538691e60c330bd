//! What each worker pool counts, exported with the labels the metric names
//! promise (queue, plugin, version).
//!
//! The pool counts per pool, not per plugin version: settled and batch
//! counters carry the version live at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::plugin::swap::HotSwap;
use crate::pool::PoolStats;

/// One running pool, as the metrics see it.
pub struct PoolSource {
    /// Queue it drains.
    pub queue: String,
    /// Its plugin's slot (name and live version).
    pub slot: Arc<dyn HotSwap>,
    /// Its counters.
    pub stats: Arc<PoolStats>,
    /// Live workers.
    pub workers: watch::Receiver<usize>,
    /// Configured most workers.
    pub max_workers: usize,
}

impl PoolSource {
    /// The source for `pool`, serving `queue` with the plugin in `slot`.
    pub fn of(
        queue: &str,
        slot: Arc<dyn HotSwap>,
        pool: &crate::pool::WorkerPool,
        max_workers: usize,
    ) -> Self {
        Self {
            queue: queue.to_owned(),
            slot,
            stats: pool.stats(),
            workers: pool.workers(),
            max_workers,
        }
    }
}

impl std::fmt::Debug for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSource")
            .field("queue", &self.queue)
            .finish()
    }
}

/// Collector over every registered pool.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pools: Mutex<Vec<PoolSource>>,
}

impl PoolMetrics {
    /// Adds a pool.
    pub fn add(&self, pool: PoolSource) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pool);
    }

    /// What each pool's plugin is and did, for `GET /v1/plugins`.
    pub fn plugins(&self) -> Vec<serde_json::Value> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .map(|p| {
                let s = p.stats.snapshot();
                let versions: Vec<_> = p
                    .slot
                    .batches_by_version()
                    .into_iter()
                    .map(|(version, batches)| serde_json::json!({ "version": version, "batches": batches }))
                    .collect();
                serde_json::json!({
                    "name": p.slot.spec().name,
                    "queue": p.queue,
                    "version": p.slot.version(),
                    "last_refused": p.slot.last_error(),
                    "versions": versions,
                    "done": s.done,
                    "retried": s.retried,
                    "dead": s.dead,
                    "batches": s.batches,
                    "failed_batches": s.failed_batches,
                    "busy_workers": *p.workers.borrow(),
                    "max_workers": p.max_workers,
                })
            })
            .collect()
    }
}

impl Collector for PoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<_> = pools
            .iter()
            .map(|p| {
                (
                    p.queue.clone(),
                    p.slot.spec().name.clone(),
                    p.slot.version(),
                    p.stats.snapshot(),
                    *p.workers.borrow(),
                    p.max_workers,
                )
            })
            .collect();
        drop(pools);

        let mut m = encoder.encode_descriptor(
            "taskhost_tasks_settled",
            "Tasks settled by this host's pools, by outcome (done, retry, dead, lost)",
            None,
            MetricType::Counter,
        )?;
        for (queue, plugin, version, s, _, _) in &rows {
            for (outcome, n) in [
                ("done", s.done),
                ("retry", s.retried),
                ("dead", s.dead),
                ("lost", s.lost_leases),
            ] {
                let labels = [
                    ("queue", queue.as_str()),
                    ("plugin", plugin.as_str()),
                    ("version", version.as_str()),
                    ("outcome", outcome),
                ];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_batches",
            "Handler calls by result: ok, or error (the call failed as a whole)",
            None,
            MetricType::Counter,
        )?;
        for (queue, plugin, version, s, _, _) in &rows {
            let failed = s.failed_batches + s.split_batches;
            for (result, n) in [
                ("ok", s.handler_calls.saturating_sub(failed)),
                ("error", failed),
            ] {
                let labels = [
                    ("queue", queue.as_str()),
                    ("plugin", plugin.as_str()),
                    ("version", version.as_str()),
                    ("result", result),
                ];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_batch_flushes",
            "Batches sent by the dispatcher, by what sent them (size, latency, interval, urgent)",
            None,
            MetricType::Counter,
        )?;
        for (queue, _, _, s, _, _) in &rows {
            for (trigger, n) in [
                ("size", s.flush_full),
                ("latency", s.flush_latency),
                ("interval", s.flush_interval),
                ("urgent", s.flush_urgent),
            ] {
                let labels = [("queue", queue.as_str()), ("trigger", trigger)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_workers_busy",
            "Workers of the queue's pool running a batch now",
            None,
            MetricType::Gauge,
        )?;
        for (queue, _, _, _, busy, _) in &rows {
            ConstGauge::new(*busy as i64).encode(m.encode_family(&[("queue", queue.as_str())])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_workers_max",
            "Most workers the queue's pool runs at once (max_workers)",
            None,
            MetricType::Gauge,
        )?;
        for (queue, _, _, _, _, max) in &rows {
            ConstGauge::new(*max as i64).encode(m.encode_family(&[("queue", queue.as_str())])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_plugin_info",
            "1 per served plugin, labelled with its live version",
            None,
            MetricType::Gauge,
        )?;
        for (_, plugin, version, _, _, _) in &rows {
            let labels = [("plugin", plugin.as_str()), ("version", version.as_str())];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

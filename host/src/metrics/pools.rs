//! What each worker pool counts, exported with the labels the metric names
//! promise (queue, plugin, version).
//!
//! The pool counts settled tasks per pool, not per plugin version: those
//! carry the version live at scrape time. Batches and their durations are
//! counted per version by the plugin's slot ([`crate::plugin::history`]).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Split, encode_histogram, family};
use crate::plugin::swap::HotSwap;
use crate::pool::timings::{DurationHistogram, HistogramSnapshot};
use crate::pool::{PoolSnapshot, PoolStats};

/// One running pool, as the metrics see it.
pub struct PoolSource {
    /// Queue it drains.
    pub queue: String,
    /// Its plugin's slot (name and live version).
    pub slot: Arc<dyn HotSwap>,
    /// Its counters.
    pub stats: Arc<PoolStats>,
    /// Push to first lease of its tasks.
    pub wait: Arc<DurationHistogram>,
    /// Workers running a batch now (idle ones are alive but not busy),
    /// and the most the pool runs.
    pub load: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
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
            wait: pool.wait_times(),
            load: Arc::new(pool.load_gauge()),
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

/// The outcomes of settled tasks, each with its count in a pool's figures.
const OUTCOMES: [Split<PoolSnapshot>; 5] = [
    ("done", |s| s.done),
    ("retry", |s| s.retried),
    ("dead", |s| s.dead),
    ("released", |s| s.released),
    ("lost", |s| s.lost_leases),
];

/// What sends a batch, each with its count in a pool's figures.
const FLUSHES: [Split<PoolSnapshot>; 4] = [
    ("size", |s| s.flush_full),
    ("latency", |s| s.flush_latency),
    ("interval", |s| s.flush_interval),
    ("urgent", |s| s.flush_urgent),
];

/// The per-queue worker gauges, in the order of a row's `[busy, max]`.
const WORKER_GAUGES: [(&str, &str); 2] = [
    (
        "taskhost_workers_busy",
        "Workers of the queue's pool running a batch now",
    ),
    (
        "taskhost_workers_max",
        "Most workers the queue's pool runs at once (max_workers)",
    ),
];

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

    /// Runs `f` over the registered pools.
    pub fn each<T>(&self, f: impl FnMut(&PoolSource) -> T) -> Vec<T> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().map(f).collect()
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
                    [(p.load)().0, p.max_workers],
                )
            })
            .collect();
        // Per version: (queue, plugin, version, results, durations).
        let versions: Vec<_> = pools
            .iter()
            .flat_map(|p| {
                let (queue, plugin) = (p.queue.clone(), p.slot.spec().name.clone());
                p.slot
                    .history()
                    .versions()
                    .into_iter()
                    .map(move |(v, s)| (queue.clone(), plugin.clone(), v, s))
            })
            .collect();
        let waits: Vec<_> = pools
            .iter()
            .map(|p| (p.queue.clone(), p.wait.snapshot()))
            .collect();
        drop(pools);

        let settled = rows.iter().flat_map(|(queue, plugin, version, s, _)| {
            OUTCOMES.map(|(outcome, count)| {
                let labels = [
                    ("queue", queue.as_str()),
                    ("plugin", plugin.as_str()),
                    ("version", version.as_str()),
                    ("outcome", outcome),
                ];
                (labels, ConstCounter::new(count(s)))
            })
        });
        family(
            &mut encoder,
            "taskhost_tasks_settled",
            "Tasks settled by this host's pools, by outcome (done, retry, dead, released, lost)",
            settled,
        )?;
        family(
            &mut encoder,
            "taskhost_batches",
            "Handler calls ended, per plugin version, by result (ok, trap, time_limit, memory_limit, error)",
            versions.iter().flat_map(|(queue, plugin, version, s)| {
                s.results.iter().map(|(result, n)| {
                    let labels = [
                        ("queue", queue.as_str()),
                        ("plugin", plugin.as_str()),
                        ("version", version.as_str()),
                        ("result", result.as_str()),
                    ];
                    (labels, ConstCounter::new(*n))
                })
            }),
        )?;
        let mut m = encoder.encode_descriptor(
            "taskhost_batch_duration_seconds",
            "Duration of handler calls (every version), from call to answer",
            None,
            MetricType::Histogram,
        )?;
        let mut merged: std::collections::BTreeMap<(&str, &str), HistogramSnapshot> =
            std::collections::BTreeMap::new();
        for (queue, plugin, _, s) in &versions {
            merged
                .entry((queue.as_str(), plugin.as_str()))
                .or_default()
                .merge(&s.durations);
        }
        for ((queue, plugin), h) in &merged {
            let labels = [("queue", *queue), ("plugin", *plugin)];
            encode_histogram(&mut m.encode_family(&labels)?, h)?;
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_task_wait_seconds",
            "Time from push to first lease of the tasks this host's pools leased",
            None,
            MetricType::Histogram,
        )?;
        for (queue, h) in &waits {
            encode_histogram(&mut m.encode_family(&[("queue", queue.as_str())])?, h)?;
        }
        let flushes = rows.iter().flat_map(|(queue, _, _, s, _)| {
            FLUSHES.map(|(trigger, count)| {
                let labels = [("queue", queue.as_str()), ("trigger", trigger)];
                (labels, ConstCounter::new(count(s)))
            })
        });
        family(
            &mut encoder,
            "taskhost_batch_flushes",
            "Batches sent by the dispatcher, by what sent them (size, latency, interval, urgent)",
            flushes,
        )?;
        for (i, (name, help)) in WORKER_GAUGES.into_iter().enumerate() {
            let samples = rows.iter().map(|(queue, _, _, _, workers)| {
                (
                    [("queue", queue.as_str())],
                    ConstGauge::new(workers[i] as i64),
                )
            });
            family(&mut encoder, name, help, samples)?;
        }
        family(
            &mut encoder,
            "taskhost_plugin_info",
            "1 per served plugin, labelled with its live version",
            rows.iter().map(|(_, plugin, version, _, _)| {
                let labels = [("plugin", plugin.as_str()), ("version", version.as_str())];
                (labels, ConstGauge::new(1i64))
            }),
        )?;
        Ok(())
    }
}

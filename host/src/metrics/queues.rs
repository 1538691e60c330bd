//! Queue gauges: counts by state for every known queue, plus backend
//! health, read from the backend at scrape time and cached for
//! [`CACHE_FOR`] so many scrapers cost the backend one read a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{Labels, Split, family};
use crate::queue::{QueueStats, QueueStore};

/// How long a backend read serves scrapes.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The last backend read.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    up: bool,
    queues: Vec<(String, QueueStats)>,
    /// Per queue: paused, and seconds the oldest pending task has waited.
    control: Vec<(String, bool, Option<f64>)>,
}

/// Collector of the queue gauges.
#[derive(Debug)]
pub struct QueueGauges {
    store: Arc<dyn QueueStore>,
    ops: Family<Labels, Histogram, fn() -> Histogram>,
    cache: Mutex<Option<(Instant, Snapshot)>>,
    /// One refresh at a time; a scrape arriving meanwhile waits and reuses it.
    refreshing: tokio::sync::Mutex<()>,
}

impl QueueGauges {
    /// Gauges over `store`, timing reads into `ops`.
    pub fn new(
        store: Arc<dyn QueueStore>,
        ops: Family<Labels, Histogram, fn() -> Histogram>,
    ) -> Self {
        Self {
            store,
            ops,
            cache: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&*cache, Some((at, _)) if at.elapsed() < CACHE_FOR)
    }

    fn time(&self, op: &str, started: Instant) {
        self.ops
            .get_or_create(&vec![("op", op.to_owned())])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Pings the backend (timed as op `ping`).
    pub async fn ping(&self) -> bool {
        let t = Instant::now();
        let up = self.store.ping().await.is_ok();
        self.time("ping", t);
        up
    }

    /// Reads the backend unless the cached read is under [`CACHE_FOR`] old.
    pub async fn refresh(&self) {
        if self.fresh() {
            return;
        }
        let _one = self.refreshing.lock().await;
        if self.fresh() {
            return;
        }
        let mut snap = Snapshot {
            up: self.ping().await,
            queues: Vec::new(),
            control: Vec::new(),
        };
        if snap.up {
            let t = Instant::now();
            let names = self.store.known_queues().await;
            self.time("known_queues", t);
            match names {
                Ok(names) => {
                    for name in names {
                        let Ok(q) = self.store.queue(&name) else {
                            continue;
                        };
                        let t = Instant::now();
                        let stats = q.stats().await;
                        self.time("stats", t);
                        if let Some(a) = q.admin() {
                            let paused = a.is_paused().await.unwrap_or(false);
                            let now = crate::clock::system().now_ms();
                            let oldest = crate::queue::admin::oldest_pending_age(a, now)
                                .await
                                .ok()
                                .flatten();
                            snap.control.push((name.clone(), paused, oldest));
                        }
                        match stats {
                            Ok(s) => snap.queues.push((name, s)),
                            Err(e) => {
                                tracing::warn!(queue = %name, error = %e, "metrics: reading queue counts");
                                snap.up = false;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: listing queues");
                    snap.up = false;
                }
            }
        }
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), snap));
    }
}

/// The states a queue's tasks are counted by, each with its count.
const STATES: [Split<QueueStats>; 4] = [
    ("pending", |s| s.pending),
    ("delayed", |s| s.delayed),
    ("leased", |s| s.leased),
    ("dead", |s| s.dead),
];

impl Collector for QueueGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let tasks = snap.queues.iter().flat_map(|(queue, s)| {
            STATES.map(|(state, count)| {
                let labels = [("queue", queue.as_str()), ("state", state)];
                (labels, ConstGauge::new(count(s) as i64))
            })
        });
        family(
            &mut encoder,
            "taskhost_queue_tasks",
            "Tasks in each queue by state (pending, delayed, leased, dead), read from the backend",
            tasks,
        )?;
        let paused = snap.control.iter().map(|(queue, paused, _)| {
            let paused = ConstGauge::new(i64::from(*paused));
            ([("queue", queue.as_str())], paused)
        });
        family(
            &mut encoder,
            "taskhost_queue_paused",
            "1 while an operator has paused the queue (durable, every host obeys it)",
            paused,
        )?;
        let oldest = snap.control.iter().map(|(queue, _, oldest)| {
            (
                [("queue", queue.as_str())],
                ConstGauge::new(oldest.unwrap_or(0.0)),
            )
        });
        family(
            &mut encoder,
            "taskhost_queue_oldest_pending_age_seconds",
            "Seconds the oldest pending task of the queue has waited since it was pushed (0 when none)",
            oldest,
        )?;
        let m = encoder.encode_descriptor(
            "taskhost_backend_up",
            "1 when the queue backend answered at the last scrape",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snap.up)).encode(m)?;
        Ok(())
    }
}

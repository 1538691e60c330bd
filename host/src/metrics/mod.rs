//! Prometheus metrics (`GET /metrics`), encoded by `prometheus-client`.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Metrics`]: the registry, push and backend-op families, rendering |
//! | `queues.rs` | queue gauges read from the backend at scrape time, cached for 1 s |
//! | `pools.rs` | what each worker pool counts ([`crate::pool::PoolStats`]), with its labels; batch results and durations per plugin version |
//! | `outbound.rs` | plugin swaps, outbound HTTP per destination, source polls |
//! | `plugin_page.rs` | `GET /v1/plugins`: each plugin's history and per-version figures |
//!
//! Queue gauges come from the backend, not from this process, so every host
//! on a shared backend reports the fleet's truth.

mod outbound;
mod plugin_page;
mod pools;
mod queues;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::http::HttpClient;
use crate::pool::timings::HistogramSnapshot;
use crate::queue::QueueStore;

pub use self::outbound::SourceEntry;
pub use self::pools::PoolSource;

/// Labels as name/value pairs.
type Labels = Vec<(&'static str, String)>;

/// Builds the backend-op histogram: 100 µs to ~13 s.
fn op_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 4.0, 10))
}

/// Encodes one of our histograms with `prometheus-client`'s encoder.
fn encode_histogram(m: &mut MetricEncoder<'_>, h: &HistogramSnapshot) -> std::fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum_secs, h.count(), &h.buckets(), None)
}

/// A label value and how to read its count from a `T`.
type Split<T> = (&'static str, fn(&T) -> u64);

/// Writes the family `name` of `M` metrics (counters, gauges): its help,
/// then one sample per `(labels, metric)`.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Every metric the host exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pushed: Family<Labels, Counter>,
    backend_op: Family<Labels, Histogram, fn() -> Histogram>,
    queues: Arc<queues::QueueGauges>,
    pools: Arc<pools::PoolMetrics>,
    outbound: Arc<outbound::Outbound>,
}

impl Metrics {
    /// Metrics over the queues of `store`.
    pub fn new(store: Arc<dyn QueueStore>) -> Arc<Self> {
        let mut registry = Registry::default();
        let pushed = Family::<Labels, Counter>::default();
        registry.register(
            "taskhost_tasks_pushed",
            "Tasks pushed through this host's API, by result (created, duplicate, refused)",
            pushed.clone(),
        );
        let backend_op =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(op_histogram);
        registry.register(
            "taskhost_backend_op_duration_seconds",
            "Duration of queue backend operations made by the API and the scrape, by op",
            backend_op.clone(),
        );
        let queues = Arc::new(queues::QueueGauges::new(store, backend_op.clone()));
        registry.register_collector(Box::new(queues.clone()));
        let pools = Arc::new(pools::PoolMetrics::default());
        registry.register_collector(Box::new(pools.clone()));
        let outbound = Arc::new(outbound::Outbound::default());
        registry.register_collector(Box::new(outbound.clone()));
        Arc::new(Self {
            registry,
            pushed,
            backend_op,
            queues,
            pools,
            outbound,
        })
    }

    /// Counts a push request's outcome.
    pub fn pushed(&self, queue: &str, created: u64, duplicate: u64, refused: u64) {
        for (result, n) in [
            ("created", created),
            ("duplicate", duplicate),
            ("refused", refused),
        ] {
            if n > 0 {
                self.pushed
                    .get_or_create(&vec![
                        ("queue", queue.to_owned()),
                        ("result", result.into()),
                    ])
                    .inc_by(n);
            }
        }
    }

    /// Records how long one backend operation took.
    pub fn backend_op(&self, op: &str, took: Duration) {
        self.backend_op
            .get_or_create(&vec![("op", op.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Exports a running pool's counters (and its plugin's info).
    pub fn add_pool(&self, pool: PoolSource) {
        self.outbound.add_slot(pool.slot.clone());
        self.pools.add(pool);
    }

    /// Exports a running source's polls (and its plugin's swaps).
    pub fn add_source(&self, source: SourceEntry) {
        self.outbound.add_source(source);
    }

    /// Exports the requests of the plugins' outbound HTTP client.
    pub fn set_http(&self, client: Arc<HttpClient>) {
        self.outbound.set_http(client);
    }

    /// Each running plugin (handlers, then sources): its version history,
    /// batches per version and result, duration quantiles, pool totals.
    pub fn plugins(&self) -> Vec<serde_json::Value> {
        plugin_page::plugins(&self.pools, &self.outbound)
    }

    /// Whether the backend answered at the last scrape or readiness check.
    pub async fn backend_up(&self) -> bool {
        self.queues.ping().await
    }

    /// The exposition text, queue gauges at most 1 s old.
    pub async fn render(&self) -> String {
        self.queues.refresh().await;
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

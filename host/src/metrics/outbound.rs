//! What the host does beside its pools: plugin swaps (handlers and sources),
//! outbound HTTP per destination, source polls.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::http::HttpClient;
use crate::plugin::swap::HotSwap;
use crate::source::PollerStats;

/// One running source, as the metrics see it.
pub struct SourceEntry {
    /// Its display name (`source` label).
    pub name: String,
    /// Queue it feeds.
    pub queue: String,
    /// Its plugin's slot.
    pub slot: Arc<dyn HotSwap>,
    /// Its poller's counters.
    pub stats: Arc<PollerStats>,
}

impl std::fmt::Debug for SourceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceEntry")
            .field("name", &self.name)
            .finish()
    }
}

/// Collector of swaps, outbound HTTP and source polls.
#[derive(Default)]
pub struct Outbound {
    /// Handler slots (registered with their pools) and source slots.
    slots: Mutex<Vec<Arc<dyn HotSwap>>>,
    sources: Mutex<Vec<SourceEntry>>,
    http: Mutex<Option<Arc<HttpClient>>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    /// Counts `slot`'s swaps.
    pub fn add_slot(&self, slot: Arc<dyn HotSwap>) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }

    /// Counts a source's polls (and its slot's swaps).
    pub fn add_source(&self, source: SourceEntry) {
        self.add_slot(source.slot.clone());
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// Counts the requests of the plugins' HTTP client.
    pub fn set_http(&self, client: Arc<HttpClient>) {
        *self.http.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
    }

    /// Runs `f` over the registered sources.
    pub fn each_source<T>(&self, f: impl FnMut(&SourceEntry) -> T) -> Vec<T> {
        let s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().map(f).collect()
    }
}

impl Collector for Outbound {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Summed per plugin name: one plugin may serve several queues.
        let mut swaps: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for slot in self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let (s, r) = slot.history().swap_counts();
            let e = swaps.entry(slot.spec().name.clone()).or_default();
            e.0 += s;
            e.1 += r;
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_plugin_swaps",
            "Plugin reloads by result: swapped (a new version is live) or refused (the old one kept serving)",
            None,
            MetricType::Counter,
        )?;
        for (plugin, (swapped, refused)) in &swaps {
            for (result, n) in [("swapped", swapped), ("refused", refused)] {
                let labels = [("plugin", plugin.as_str()), ("result", result)];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }

        let hosts = self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.stats().per_host.snapshot())
            .unwrap_or_default();
        let mut m = encoder.encode_descriptor(
            "taskhost_http_requests",
            "Plugins' outbound HTTP requests by destination host:port and how they ended (status code, timeout, error, refused)",
            None,
            MetricType::Counter,
        )?;
        for (host, c) in &hosts {
            for (status, n) in &c.by_status {
                let labels = [("host", host.as_str()), ("status", status.as_str())];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "taskhost_http_retries",
            "Outbound requests retried by the host after a 429 or 503 answer, by destination",
            None,
            MetricType::Counter,
        )?;
        for (host, c) in &hosts {
            ConstCounter::new(c.retries).encode(m.encode_family(&[("host", host.as_str())])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "taskhost_source_polls",
            "Polls of source plugins by result: tasks (enqueued), empty, error (the poll or its enqueue failed)",
            None,
            MetricType::Counter,
        )?;
        for s in self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (result, n) in [
                ("tasks", &s.stats.with_tasks),
                ("empty", &s.stats.empty),
                ("error", &s.stats.failed),
            ] {
                let labels = [("source", s.name.as_str()), ("result", result)];
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

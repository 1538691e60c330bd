//! What the host does beside its pools: plugin swaps (handlers and sources),
//! outbound HTTP per destination, source polls.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;

use super::family;
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
        family(
            &mut encoder,
            "taskhost_plugin_swaps",
            "Plugin reloads by result: swapped (a new version is live) or refused (the old one kept serving)",
            swaps.iter().flat_map(|(plugin, (swapped, refused))| {
                [("swapped", *swapped), ("refused", *refused)].map(|(result, n)| {
                    let labels = [("plugin", plugin.as_str()), ("result", result)];
                    (labels, ConstCounter::new(n))
                })
            }),
        )?;

        let hosts = self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.stats().per_host.snapshot())
            .unwrap_or_default();
        family(
            &mut encoder,
            "taskhost_http_requests",
            "Plugins' outbound HTTP requests by destination host:port and how they ended (status code, timeout, error, refused)",
            hosts.iter().flat_map(|(host, c)| {
                c.by_status.iter().map(|(status, n)| {
                    let labels = [("host", host.as_str()), ("status", status.as_str())];
                    (labels, ConstCounter::new(*n))
                })
            }),
        )?;
        family(
            &mut encoder,
            "taskhost_http_retries",
            "Outbound requests retried by the host after a 429 or 503 answer, by destination",
            hosts
                .iter()
                .map(|(host, c)| ([("host", host.as_str())], ConstCounter::new(c.retries))),
        )?;

        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        family(
            &mut encoder,
            "taskhost_source_polls",
            "Polls of source plugins by result: tasks (enqueued), empty, error (the poll or its enqueue failed)",
            sources.iter().flat_map(|s| {
                [
                    ("tasks", &s.stats.with_tasks),
                    ("empty", &s.stats.empty),
                    ("error", &s.stats.failed),
                ]
                .map(|(result, n)| {
                    let labels = [("source", s.name.as_str()), ("result", result)];
                    (labels, ConstCounter::new(n.load(Ordering::Relaxed)))
                })
            }),
        )?;
        Ok(())
    }
}

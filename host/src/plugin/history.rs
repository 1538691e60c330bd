//! What a plugin slot remembers of its versions, in this process: when each
//! was loaded, swapped in or refused (and why), and per version the calls
//! started, how they ended and how long they took.
//!
//! The record is per host and in memory: it starts when the host starts and
//! is what `GET /v1/plugins` and the metrics read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::pool::timings::{BatchResult, DurationHistogram, HistogramSnapshot};

/// Most events kept per slot; older ones are dropped first.
pub const MAX_EVENTS: usize = 100;

/// What happened to a slot's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The version the host started with.
    Loaded,
    /// A new version was swapped in.
    Swapped,
    /// A reload was refused; the running version kept serving.
    Refused,
}

/// One entry of a slot's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The version live afterwards.
    pub version: String,
    /// The version replaced (swaps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Why a reload was refused (refusals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Calls of one version: how many started, how they ended, how long.
#[derive(Debug, Default)]
pub struct VersionStats {
    /// Calls started.
    pub calls: AtomicU64,
    /// Ended calls by [`BatchResult`], in [`BatchResult::ALL`] order.
    results: [AtomicU64; 5],
    /// Durations of ended calls.
    pub durations: DurationHistogram,
}

impl VersionStats {
    /// Records one ended call.
    pub fn record(&self, result: BatchResult, took: Duration) {
        let i = BatchResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(BatchResult::ALL.len() - 1);
        self.results[i].fetch_add(1, Ordering::Relaxed);
        self.durations.observe(took);
    }

    /// Ended calls per result.
    pub fn results(&self) -> Vec<(BatchResult, u64)> {
        BatchResult::ALL
            .iter()
            .zip(&self.results)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A plain copy of one version's record.
#[derive(Debug, Clone)]
pub struct VersionSnapshot {
    /// Calls started.
    pub calls: u64,
    /// Ended calls per result.
    pub results: Vec<(BatchResult, u64)>,
    /// Durations of ended calls.
    pub durations: HistogramSnapshot,
}

/// A slot's history and per-version records.
#[derive(Debug, Default)]
pub struct SlotHistory {
    events: Mutex<VecDeque<VersionEvent>>,
    versions: Mutex<BTreeMap<String, Arc<VersionStats>>>,
    swapped: AtomicU64,
    refused: AtomicU64,
}

fn now_ms() -> u64 {
    crate::clock::system().now_ms()
}

impl SlotHistory {
    /// A history starting with `version` loaded now.
    pub fn starting_with(version: &str) -> Self {
        let h = Self::default();
        h.record_of(version);
        h.push(VersionEvent {
            at_ms: now_ms(),
            kind: EventKind::Loaded,
            version: version.to_owned(),
            from: None,
            reason: None,
        });
        h
    }

    fn push(&self, e: VersionEvent) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(e);
    }

    /// Records a swap from `from` to `to`.
    pub fn swapped(&self, from: &str, to: &str) {
        self.swapped.fetch_add(1, Ordering::Relaxed);
        // Its series exist (at zero) before its first call.
        self.record_of(to);
        self.push(VersionEvent {
            at_ms: now_ms(),
            kind: EventKind::Swapped,
            version: to.to_owned(),
            from: Some(from.to_owned()),
            reason: None,
        });
    }

    /// Records a refused reload while `live` kept serving.
    pub fn refused(&self, live: &str, reason: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.push(VersionEvent {
            at_ms: now_ms(),
            kind: EventKind::Refused,
            version: live.to_owned(),
            from: None,
            reason: Some(reason),
        });
    }

    /// Swaps made and reloads refused.
    pub fn swap_counts(&self) -> (u64, u64) {
        (
            self.swapped.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> Vec<VersionEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().cloned().collect()
    }

    /// The record of `version`, counted as one more call of it.
    pub fn start_call(&self, version: &str) -> Arc<VersionStats> {
        let stats = self.record_of(version);
        stats.calls.fetch_add(1, Ordering::Relaxed);
        stats
    }

    /// The record of `version`, made on first use.
    fn record_of(&self, version: &str) -> Arc<VersionStats> {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        // On the hot path: allocate the key only for a version's first call.
        match v.get(version) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(VersionStats::default());
                v.insert(version.to_owned(), s.clone());
                s
            }
        }
    }

    /// Each version's record.
    pub fn versions(&self) -> BTreeMap<String, VersionSnapshot> {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    VersionSnapshot {
                        calls: s.calls.load(Ordering::Relaxed),
                        results: s.results(),
                        durations: s.durations.snapshot(),
                    },
                )
            })
            .collect()
    }

    /// Calls started per version, versions without a call left out.
    pub fn calls_by_version(&self) -> BTreeMap<String, u64> {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .map(|(k, s)| (k.clone(), s.calls.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_events_and_counts_per_version() {
        let h = SlotHistory::starting_with("a");
        h.swapped("a", "b");
        h.refused("b", "not a component".into());
        let e = h.events();
        assert_eq!(
            e.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Loaded, EventKind::Swapped, EventKind::Refused]
        );
        assert_eq!(e[1].from.as_deref(), Some("a"));
        assert_eq!(e[2].reason.as_deref(), Some("not a component"));
        assert_eq!(h.swap_counts(), (1, 1));
        for _ in 0..MAX_EVENTS {
            h.refused("b", "x".into());
        }
        assert_eq!(h.events().len(), MAX_EVENTS);
        assert_eq!(h.events()[0].kind, EventKind::Refused);

        assert_eq!(
            h.versions()["a"].calls,
            0,
            "the loaded version is listed at once"
        );
        h.start_call("a")
            .record(BatchResult::Ok, Duration::from_millis(1));
        h.start_call("b")
            .record(BatchResult::Trap, Duration::from_millis(2));
        h.start_call("b");
        let v = h.versions();
        assert_eq!((v["a"].calls, v["b"].calls), (1, 2));
        assert!(v["b"].results.contains(&(BatchResult::Trap, 1)));
        assert_eq!(v["b"].durations.count(), 1);
        assert_eq!(h.calls_by_version()["b"], 2);
    }
}

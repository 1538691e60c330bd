//! `GET /v1/plugins`: per plugin this host runs, its version history
//! (loaded, swapped, refused with the reason), and per version the calls
//! started, how they ended (ok, or failed by cause) and p50/p99 duration.
//!
//! The figures are this host's, in memory since it started: another host
//! on the same backend reports its own.

use serde_json::{Value, json};

use super::outbound::Outbound;
use super::pools::PoolMetrics;
use crate::plugin::swap::HotSwap;
use crate::pool::timings::BatchResult;

/// The version records and history of one slot.
fn slot_json(slot: &dyn HotSwap) -> (Value, Value) {
    let history = slot.history();
    let versions: Vec<Value> = history
        .versions()
        .into_iter()
        .map(|(version, s)| {
            let ok = s
                .results
                .iter()
                .find(|(r, _)| *r == BatchResult::Ok)
                .map_or(0, |(_, n)| *n);
            let ended: u64 = s.results.iter().map(|(_, n)| n).sum();
            let results: serde_json::Map<String, Value> = s
                .results
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
                .collect();
            json!({
                "version": version,
                "batches": s.calls,
                "ok": ok,
                "failed": ended - ok,
                "results": results,
                "p50_seconds": s.durations.quantile(0.5),
                "p99_seconds": s.durations.quantile(0.99),
            })
        })
        .collect();
    (json!(versions), json!(history.events()))
}

/// Every plugin's record, handlers first.
pub fn plugins(pools: &PoolMetrics, outbound: &Outbound) -> Vec<Value> {
    let mut out = pools.each(|p| {
        let s = p.stats.snapshot();
        let (versions, history) = slot_json(&*p.slot);
        json!({
            "name": p.slot.spec().name,
            "kind": "handler",
            "queue": p.queue,
            "version": p.slot.version(),
            "last_refused": p.slot.last_error(),
            "versions": versions,
            "history": history,
            "done": s.done,
            "retried": s.retried,
            "dead": s.dead,
            "released": s.released,
            "batches": s.batches,
            "failed_batches": s.failed_batches,
            "busy_workers": (p.load)().0,
            "max_workers": p.max_workers,
        })
    });
    out.extend(outbound.each_source(|src| {
        let (versions, history) = slot_json(&*src.slot);
        json!({
            "name": src.name,
            "kind": "source",
            "queue": src.queue,
            "version": src.slot.version(),
            "last_refused": src.slot.last_error(),
            "versions": versions,
            "history": history,
        })
    }));
    out
}

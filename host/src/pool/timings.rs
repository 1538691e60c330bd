//! Lock-free duration histograms (batch durations, task waits) and the
//! result classes of a handler call.
//!
//! The recorders are atomics so the hot path pays a few relaxed adds; the
//! metrics encode them as Prometheus histograms and the plugins page reads
//! quantiles from the same buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bound of the first bucket, in nanoseconds (100 µs).
const FIRST_NS: u64 = 100_000;

/// Finite buckets: 100 µs doubling up to ~28 minutes.
pub const BUCKETS: usize = 25;

/// Upper bounds of the finite buckets, in seconds.
pub fn bounds() -> impl Iterator<Item = f64> {
    (0..BUCKETS).map(|k| (FIRST_NS << k) as f64 / 1e9)
}

/// A histogram of durations with fixed exponential buckets.
#[derive(Debug)]
pub struct DurationHistogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let k = (0..BUCKETS)
            .find(|&k| ns <= FIRST_NS << k)
            .unwrap_or(BUCKETS);
        self.counts[k].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_secs: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A copy of a [`DurationHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative); the last one is +Inf.
    pub counts: Vec<u64>,
    /// Sum of all observations, in seconds.
    pub sum_secs: f64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS + 1],
            sum_secs: 0.0,
        }
    }
}

impl HistogramSnapshot {
    /// Observations made.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_secs += other.sum_secs;
    }

    /// (upper bound, count in that bucket) pairs, +Inf as `f64::MAX`: what
    /// `prometheus-client`'s encoder takes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        bounds()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// The `q` quantile (0..=1) in seconds, interpolated within its bucket
    /// as Prometheus' `histogram_quantile` does; none without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let bounds: Vec<f64> = bounds().collect();
        let mut seen = 0u64;
        for (k, &n) in self.counts.iter().enumerate() {
            if n == 0 || ((seen + n) as f64) < rank {
                seen += n;
                continue;
            }
            let Some(&upper) = bounds.get(k) else {
                // In the +Inf bucket: the largest finite bound is all we know.
                return bounds.last().copied();
            };
            let lower = if k == 0 { 0.0 } else { bounds[k - 1] };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        bounds.last().copied()
    }
}

/// How a handler call ended, as `taskhost_batches_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BatchResult {
    /// It answered one outcome per task.
    Ok,
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// It ran past its time limit.
    TimeLimit,
    /// It grew past its memory limit.
    MemoryLimit,
    /// Any other failure: a wrong number of outcomes, host code failing.
    Error,
}

impl BatchResult {
    /// Every result, in label order.
    pub const ALL: [BatchResult; 5] = [
        Self::Ok,
        Self::Trap,
        Self::TimeLimit,
        Self::MemoryLimit,
        Self::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Trap => "trap",
            Self::TimeLimit => "time_limit",
            Self::MemoryLimit => "memory_limit",
            Self::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles_follow_the_observations() {
        let h = DurationHistogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_micros(50));
        }
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.counts[0], 99);
        // 1 s lies in (0.8192 s, 1.6384 s].
        assert_eq!(s.counts[14], 1);
        assert!(s.quantile(0.5).unwrap() <= 0.000_1);
        let p99 = s.quantile(0.995).unwrap();
        assert!((0.8192..=1.6384).contains(&p99), "{p99}");
        assert!((s.sum_secs - 1.00495).abs() < 1e-9, "{}", s.sum_secs);
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        let mut m = s.clone();
        m.merge(&s);
        assert_eq!(m.count(), 200);
        h.observe(Duration::from_secs(100_000));
        assert_eq!(h.snapshot().counts[BUCKETS], 1);
    }
}

//! Exponential back-off with a cap and +-20 % jitter, and the fixed tick of
//! background loops.
//!
//! One policy serves task retries, source polling and reconnects, so their
//! schedules can be reasoned about (and tested) in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential back-off: `base * 2^(n-1)`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay after the first failure.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Upper bound of the delay before jitter.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Fraction of the delay added or removed at random (0.2 = +-20 %).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// A policy with the given base and cap and the default +-20 % jitter.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            ..Self::default()
        }
    }

    /// The delay before jitter after `failures` consecutive failures (>= 1).
    pub fn nominal(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(exp).unwrap_or(u64::MAX);
        let nanos = (self.base.as_nanos()).saturating_mul(u128::from(factor));
        let capped = nanos.min(self.max.as_nanos());
        Duration::from_nanos(capped.min(u128::from(u64::MAX)) as u64)
    }

    /// The delay after `failures` consecutive failures, with jitter applied.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, fastrand::f64())
    }

    /// The delay with jitter drawn from `unit` in `[0, 1)`; deterministic for tests.
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        let nominal = self.nominal(failures).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
        // A cap from configuration may be near Duration::MAX: never overflow.
        Duration::try_from_secs_f64((nominal * factor).max(0.0)).unwrap_or(self.max)
    }

    /// The smallest and largest delay jitter can give after `failures` failures.
    pub fn bounds(&self, failures: u32) -> (Duration, Duration) {
        (
            self.delay_with(failures, 0.0),
            self.delay_with(failures, 1.0),
        )
    }
}

/// The waits of a listener that keeps one connection open (wake-ups, reload
/// requests): 50 ms after a failure, doubling with each failure in a row up
/// to 2 s, and the shortest wait again once a connection worked.
#[derive(Debug)]
pub(crate) struct Reconnect {
    policy: Backoff,
    failures: u32,
}

impl Reconnect {
    /// No failure yet.
    pub(crate) fn new() -> Self {
        Self {
            policy: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            failures: 0,
        }
    }

    /// A connection worked: the next wait is the shortest.
    pub(crate) fn connected(&mut self) {
        self.failures = 0;
    }

    /// Failed attempts since the last connection.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// An attempt to connect failed: the next wait is longer.
    pub(crate) fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Waits before the next attempt; `false` when `stop` came first.
    pub(crate) async fn wait(&self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.policy.delay(self.failures.max(1))) => true,
        }
    }
}

/// A tick every `period` for a background loop that ends with its stop
/// token; a late tick delays the next rather than bunching them.
#[derive(Debug)]
pub(crate) struct Ticker(tokio::time::Interval);

impl Ticker {
    /// The first tick comes at once.
    pub(crate) fn new(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(tick)
    }

    /// Waits for the next tick; `false` when `stop` came first.
    pub(crate) async fn next(&mut self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.0.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<_> = (1..=6).map(|n| b.nominal(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        let (lo, hi) = b.bounds(1);
        assert_eq!(lo, Duration::from_secs(8));
        assert_eq!(hi, Duration::from_secs(12));
        for _ in 0..1000 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_secs(16) && d <= Duration::from_secs(24),
                "{d:?}"
            );
        }
    }

    #[test]
    fn huge_attempt_numbers_saturate() {
        let b = Backoff::default();
        assert_eq!(b.nominal(u32::MAX), b.max);
        assert_eq!(b.nominal(0), b.base);
    }
}

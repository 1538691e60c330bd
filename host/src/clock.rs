//! Wall-clock source for queue timestamps, replaceable in tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Queues persist timestamps (lease expiry, retry time), so they need wall
/// time rather than a monotonic clock; tests swap in [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for deterministic tests.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A manual clock starting at `start_ms`.
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicU64::new(start_ms),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The clock used when none is given.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Adds a duration to a millisecond timestamp, saturating.
pub fn after(now_ms: u64, d: Duration) -> u64 {
    now_ms.saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
}

/// The instant `d` from now, or a century ahead when `d` reaches past that
/// (durations from configuration or from outside must not overflow).
pub fn deadline_in(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d.min(FAR_FUTURE))
        .unwrap_or(now + Duration::from_secs(86_400))
}

/// A century: longer than any wait the host takes on purpose.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Wall time derived from tokio's clock, so a paused test runtime drives it.
///
/// With `#[tokio::test(start_paused = true)]`, retries and lease expiry then
/// happen in virtual time, deterministically and without real waiting.
#[derive(Debug)]
pub struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_ms` now and moving with tokio's time.
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            start_ms,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        after(self.start_ms, self.start.elapsed())
    }
}

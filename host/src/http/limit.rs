//! Per-destination limits: requests in flight and requests started per second.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Concurrency and rate limit of one destination host.
#[derive(Debug)]
pub struct HostGate {
    inflight: Semaphore,
    /// Time between request starts, and how far ahead a burst may run.
    rate: Option<(Duration, Duration)>,
    /// Theoretical arrival time of the next request (GCRA).
    next: Mutex<Option<Instant>>,
}

impl HostGate {
    /// At most `concurrency` requests at once and `rate` starts per second,
    /// `burst` of them back to back.
    pub fn new(concurrency: usize, rate: Option<f64>, burst: u32) -> Self {
        let rate = rate.filter(|r| *r > 0.0).map(|r| {
            // A rate from configuration can be absurdly small: cap the period.
            let period = Duration::try_from_secs_f64(1.0 / r)
                .unwrap_or(crate::clock::FAR_FUTURE)
                .min(crate::clock::FAR_FUTURE);
            let ahead = period
                .checked_mul(burst.saturating_sub(1))
                .unwrap_or(crate::clock::FAR_FUTURE);
            (period, ahead)
        });
        Self {
            inflight: Semaphore::new(concurrency.max(1)),
            rate,
            next: Mutex::new(None),
        }
    }

    /// Waits for a start slot and a free place; the permit holds the place.
    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        if let Some((period, burst)) = self.rate {
            let now = Instant::now();
            let start = {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                let tat = next.map_or(now, |n| n.max(now));
                *next = Some(tat.checked_add(period).unwrap_or(tat));
                tat.checked_sub(burst).map_or(now, |s| s.max(now))
            };
            tokio::time::sleep_until(start).await;
        }
        match self.inflight.acquire().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("host gate semaphore closed"),
        }
    }
}

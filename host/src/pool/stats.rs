//! Running totals of a pool: atomic counters and their plain copy, both
//! generated from one field list.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Declares [`PoolStats`] (atomic counters) and [`PoolSnapshot`] (a plain
/// copy of them) from one list of documented fields.
macro_rules! pool_counters {
    ($($(#[doc = $doc:literal])+ $field:ident,)+) => {
        /// Running totals of a pool.
        #[derive(Debug, Default)]
        pub struct PoolStats {
            $($(#[doc = $doc])+ pub $field: AtomicU64,)+
        }

        /// A plain copy of [`PoolStats`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct PoolSnapshot {
            $($(#[doc = $doc])+ pub $field: u64,)+
        }

        impl PoolStats {
            /// A copy of the counters.
            pub fn snapshot(&self) -> PoolSnapshot {
                PoolSnapshot {
                    $($field: self.$field.load(Ordering::Relaxed),)+
                }
            }
        }
    };
}

pool_counters! {
    /// Tasks acked.
    done,
    /// Tasks scheduled for another attempt.
    retried,
    /// Tasks dead-lettered.
    dead,
    /// Batches handed to the handler.
    batches,
    /// Handler calls, the halves of split batches included.
    handler_calls,
    /// Calls that failed as a whole and whose tasks were charged a failed
    /// attempt (single tasks, or whole batches with `bisect` off).
    failed_batches,
    /// Calls that failed as a whole and were split in two to isolate the cause.
    split_batches,
    /// Settlements refused because the lease had been taken over.
    lost_leases,
    /// Tasks handed back to the queue unprocessed, this delivery not
    /// counted (shutdown, a batch over the byte bound).
    released,
    /// Queue operations that failed (the tasks come back when leases expire).
    queue_errors,
    /// Most workers alive at once.
    peak_workers,
    /// Batches sent because they were full.
    flush_full,
    /// Batches sent because they held an urgent task or a flush was asked for.
    flush_urgent,
    /// Batches sent because their oldest task reached `max_latency`.
    flush_latency,
    /// Batches sent by the periodic sweep.
    flush_interval,
}

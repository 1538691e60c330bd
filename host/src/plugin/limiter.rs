//! The resource limiter of one call: a plugin's memory limit holds for all
//! of its instance's linear memories together, and the number of memories,
//! tables and core instances one component may bring is bounded.
//!
//! wasmtime's `StoreLimits` checks `memory_size` per linear memory and
//! leaves the counts at 10,000, so a component made of several core
//! modules, each with its own memory, could use that many times its
//! `memory_mib` and take other plugins' pooled memory slots.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::pool::timings::BatchResult;

/// A call stopped by one of its limits: typed, so the batch counters can
/// tell a limit from a trap without reading the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct LimitHit {
    /// `TimeLimit` or `MemoryLimit`.
    pub(crate) kind: BatchResult,
    /// What was exceeded.
    pub(crate) message: String,
}

impl LimitHit {
    /// The limit an error chain stopped at, if it did.
    pub(crate) fn find(e: &wasmtime::Error) -> Option<BatchResult> {
        e.chain()
            .find_map(|c| c.downcast_ref::<LimitHit>())
            .map(|l| l.kind)
    }
}

/// Linear memories one instance may have (a component's core modules
/// together). Components built by the Rust, Python and JavaScript
/// toolchains have one.
pub(crate) const MAX_MEMORIES: usize = 2;

/// Tables one instance may have, its core modules together.
pub(crate) const MAX_TABLES: usize = 64;

/// Core instances one component instance may create.
pub(crate) const MAX_CORE_INSTANCES: usize = 128;

/// Limits of one store: the sum of its linear memories, and counts.
pub(crate) struct CallLimiter {
    /// Most bytes all linear memories together may hold.
    memory_total: usize,
    /// Bytes they hold now (as far as growth was allowed).
    memory_used: usize,
    /// Counts and table growth, with wasmtime's own limiter.
    counts: StoreLimits,
}

impl CallLimiter {
    /// Limits all memories of a store together to `memory_mib` MiB.
    pub(crate) fn new(memory_mib: u64) -> Self {
        let memory_total =
            usize::try_from(memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Self {
            memory_total,
            memory_used: 0,
            counts: StoreLimitsBuilder::new()
                .memory_size(memory_total)
                .memories(MAX_MEMORIES)
                .tables(MAX_TABLES)
                .instances(MAX_CORE_INSTANCES)
                .trap_on_grow_failure(true)
                .build(),
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        // `current` is this memory's share of `memory_used`.
        let after = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        if after > self.memory_total {
            // A trap, not a failed `memory.grow`: the batch fails with a
            // reason naming the limit instead of an allocator's abort.
            return Err(wasmtime::Error::new(LimitHit {
                kind: BatchResult::MemoryLimit,
                message: format!(
                    "memory limit of {} MiB exceeded: growing a linear memory to {desired} bytes would make all of the instance's memories {after} bytes",
                    self.memory_total >> 20
                ),
            }));
        }
        self.memory_used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.counts.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.counts.instances()
    }

    fn tables(&self) -> usize {
        self.counts.tables()
    }

    fn memories(&self) -> usize {
        self.counts.memories()
    }
}

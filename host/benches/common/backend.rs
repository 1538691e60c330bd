//! What the Redis and PostgreSQL benches share: their common options, and
//! the push and lease phases that time each queue operation alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use taskhost::clock::Clock;
use taskhost::plugin::Plugin;
use taskhost::pool::WorkerPool;
use taskhost::queue::{BaseQueue, Lease, NewTask};

use super::PoolShape;

/// Options every shared-store backend bench takes; `C` names its cases.
#[derive(Debug, Args)]
pub struct BackendArgs<C: ValueEnum + Clone + Send + Sync + 'static> {
    /// Cases to run, comma-separated [default: all, in order].
    #[arg(long, value_delimiter = ',')]
    cases: Vec<C>,
    /// No-op handler component (the testkit plugin in its default mode).
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/plugin/testkit.wasm")]
    pub plugin: PathBuf,
    /// Tasks of the one-host (and steady-load) runs.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: usize,
    /// Tasks per batch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Workers per host (the pool's default; 4 beat 2 and 8 on 2 cores).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Executions of the Harbor scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub executions: usize,
    /// Times each execution is marked outdated.
    #[arg(long, default_value_t = 3)]
    pub marks: usize,
    /// Hosts in the Harbor scenario (and scanners in Redis's SCAN case).
    #[arg(long, default_value_t = 5)]
    pub hosts: usize,
}

impl<C: ValueEnum + Clone + Send + Sync + 'static> BackendArgs<C> {
    /// The cases asked for, or all of them.
    pub fn cases(&self) -> Vec<C> {
        if self.cases.is_empty() {
            C::value_variants().to_vec()
        } else {
            self.cases.clone()
        }
    }

    /// Starts a host's pool: `plugin` drains `queue` with this bench's
    /// batch size and workers.
    pub fn start_pool(
        &self,
        queue: Arc<dyn BaseQueue>,
        plugin: Plugin,
        clock: Arc<dyn Clock>,
    ) -> Result<WorkerPool> {
        WorkerPool::start(queue, Arc::new(plugin), self.shape().config(), clock)
            .map_err(anyhow::Error::msg)
    }

    /// The pool's batch size and workers.
    pub fn shape(&self) -> PoolShape {
        PoolShape {
            batch_size: self.batch_size,
            workers: self.workers,
        }
    }

    /// The first line of the bench's output: its pool and the machine;
    /// `server` says what each case runs against.
    pub fn print_header(&self, bench: &str, server: &str) {
        println!(
            "taskhost bench {bench}: batch {}, {} workers per host, {} cores; {server} per case",
            self.batch_size,
            self.workers,
            super::cores()
        );
    }
}

/// Pushes `n` tasks of 100 bytes, `batch` at a time; task `i` is keyed
/// `key-<i>` when `keyed`.
pub async fn push_numbered(
    queue: &Arc<dyn BaseQueue>,
    n: usize,
    batch: usize,
    keyed: bool,
) -> Result<()> {
    for start in (0..n).step_by(batch) {
        let tasks = (start..(start + batch).min(n))
            .map(|i| {
                let t = NewTask::new(super::hundred_bytes());
                if keyed {
                    t.unique(format!("key-{i}"))
                } else {
                    t
                }
            })
            .collect();
        queue.push_batch(tasks).await?;
    }
    Ok(())
}

/// Leases every task `queue` holds, `batch` at a time, for ten minutes
/// (longer than any phase); returns the leases.
pub async fn lease_all(queue: &Arc<dyn BaseQueue>, batch: usize) -> Result<Vec<Lease>> {
    let mut leased = Vec::new();
    loop {
        let got = queue.lease(batch, Duration::from_secs(600)).await?;
        if got.is_empty() {
            return Ok(leased);
        }
        leased.extend(got.iter().map(|t| t.lease()));
    }
}

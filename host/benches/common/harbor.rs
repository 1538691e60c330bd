//! Harbor's execution-status refresh as queue work, for every backend's
//! bench: each execution is marked outdated `marks` times by a push keyed
//! by its id (repeats of a pending execution collapse), then hosts drain
//! the queue. The benches measure their backend's cost around each phase.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use taskhost::pool::WorkerPool;
use taskhost::queue::{BaseQueue, NewTask, Pushed};

/// Marks `executions` executions `marks` times each on `queue`, in pushes
/// of 1,000; returns how many tasks were created (the rest collapsed).
pub async fn mark(queue: &Arc<dyn BaseQueue>, executions: usize, marks: usize) -> Result<usize> {
    let mut created = 0usize;
    for _ in 0..marks {
        for start in (0..executions).step_by(1_000) {
            let tasks = (start..(start + 1_000).min(executions))
                .map(|i| NewTask::new(format!("{i} running success")).unique(i.to_string()))
                .collect();
            created += queue
                .push_batch(tasks)
                .await?
                .iter()
                .filter(|p| matches!(p, Pushed::Created(_)))
                .count();
        }
    }
    Ok(created)
}

/// Waits until `pools` together did `created` tasks, then stops them;
/// returns the tasks each did.
pub async fn drain(pools: Vec<WorkerPool>, created: usize) -> Vec<u64> {
    let done = || {
        pools
            .iter()
            .map(|p| p.stats().done.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    while (done() as usize) < created {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut per_host = Vec::new();
    for p in pools {
        per_host.push(p.shutdown().await.done);
    }
    per_host
}

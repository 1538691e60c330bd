//! Workers: run a batch through the handler while renewing its leases,
//! then settle every task (ack, retry with back-off, dead-letter); a worker
//! stops after `idle_timeout` without work, one always staying.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;

use super::{BatchError, Job, Outcome, Shared, lock, panic_message};
use crate::clock;
use crate::queue::{Action, Lease, Settle, Task};

pub(super) async fn worker(s: Arc<Shared>) {
    loop {
        lock(&s.counts).idle += 1;
        let got = tokio::time::timeout(s.cfg.idle_timeout, s.jobs_rx.recv()).await;
        let job = {
            let mut c = lock(&s.counts);
            c.idle -= 1;
            match got {
                Ok(Ok(job)) => Some(job),
                // Closed and drained (shutting down), or idle while others
                // can cover: leave. The last worker stays while the pool runs.
                Ok(Err(_)) => None,
                Err(_) if c.workers > 1 && s.jobs_rx.is_empty() => None,
                Err(_) => continue,
            }
            .or_else(|| {
                c.workers -= 1;
                s.workers_tx.send_replace(c.workers);
                None
            })
        };
        let Some(job) = job else { return };
        // A panic here is the host's own bug; the worker survives it, and
        // the batch's tasks come back when their leases expire.
        if let Err(panic) = AssertUnwindSafe(run_job(&s, job)).catch_unwind().await {
            s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue = s.queue.name(), panic = %panic_message(panic.as_ref()), "a worker caught a panic; its batch comes back when its leases expire");
        }
    }
}

async fn run_job(s: &Shared, job: Job) {
    let batch = job.batch;
    if s.stop.is_cancelled() {
        give_back(s, &batch).await;
        return;
    }
    s.stats.batches.fetch_add(1, Ordering::Relaxed);
    let leases: Vec<Lease> = batch.iter().map(Task::lease).collect();
    // The renewal runs beside the calls, never inside them: a slow queue
    // does not freeze the guest, and a lost lease stops the call.
    let settlements = tokio::select! {
        settlements = handle_bisecting(s, &batch) => settlements,
        _ = s.abort.cancelled() => {
            give_back(s, &batch).await;
            return;
        }
        why = keep_leases(s, &leases) => {
            // Another holder may run these tasks now: stop, settle nothing.
            s.stats.lost_leases.fetch_add(leases.len() as u64, Ordering::Relaxed);
            tracing::warn!(queue = s.queue.name(), tasks = leases.len(), "lease lost ({why}): the call was stopped and nothing settled");
            return;
        }
    };
    match s.queue.settle(settlements).await {
        Ok(r) => {
            s.stats
                .lost_leases
                .fetch_add(r.lost as u64, Ordering::Relaxed);
            if r.lost > 0 {
                tracing::warn!(
                    queue = s.queue.name(),
                    lost = r.lost,
                    "leases expired before settling; those tasks run again"
                );
            }
        }
        Err(e) => {
            s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue = s.queue.name(), error = %e, tasks = batch.len(), "settling a batch failed; its tasks run again when their leases expire");
        }
    }
}

/// Calls the handler on `tasks` and settles each by its outcome. A call that
/// fails as a whole (a trap, a limit, a wrong number of outcomes) is not
/// charged to every task: with `bisect` on, the two halves are called in
/// turn, down to single tasks, so only the task that causes the failure
/// spends its attempts (AWS Lambda's BisectBatchOnFunctionError).
fn handle_bisecting<'a>(
    s: &'a Shared,
    tasks: &'a [Task],
) -> Pin<Box<dyn Future<Output = Vec<Settle>> + Send + 'a>> {
    Box::pin(async move {
        s.stats.handler_calls.fetch_add(1, Ordering::Relaxed);
        let answer = match AssertUnwindSafe(s.handler.handle(tasks))
            .catch_unwind()
            .await
        {
            Ok(Ok(outcomes)) if outcomes.len() == tasks.len() => Ok(outcomes),
            Ok(Ok(outcomes)) => Err(BatchError(format!(
                "handler answered {} outcomes for a batch of {} tasks",
                outcomes.len(),
                tasks.len()
            ))),
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                let msg = panic_message(panic.as_ref());
                tracing::error!(queue = s.queue.name(), panic = %msg, "the handler panicked; its batch fails");
                Err(BatchError(format!("the handler panicked: {msg}")))
            }
        };
        let now = s.clock.now_ms();
        match answer {
            Ok(outcomes) => {
                s.failing.store(0, Ordering::Relaxed);
                tasks
                    .iter()
                    .zip(outcomes)
                    .map(|(t, o)| settle_outcome(s, t, o, now))
                    .collect()
            }
            Err(e) if s.cfg.bisect && tasks.len() > 1 => {
                s.stats.split_batches.fetch_add(1, Ordering::Relaxed);
                tracing::info!(queue = s.queue.name(), tasks = tasks.len(), error = %e, "a batch failed as a whole; calling its halves to find the cause");
                let (first, second) = tasks.split_at(tasks.len() / 2);
                let mut out = handle_bisecting(s, first).await;
                out.extend(handle_bisecting(s, second).await);
                out
            }
            Err(e) => batch_failed(s, tasks, &e, now),
        }
    })
}

/// Renews the leases every third of their time to live; returns (why) only
/// once they can no longer be trusted: the queue says some were taken over,
/// or renewal kept failing until they expired.
async fn keep_leases(s: &Shared, leases: &[Lease]) -> String {
    let ttl = s.cfg.lease_ttl;
    let mut expires = clock::deadline_in(ttl);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout_at(expires, s.queue.renew(leases, ttl)).await {
            Ok(Ok(held)) if held >= leases.len() => {
                expires = asked.checked_add(ttl).unwrap_or(expires);
            }
            Ok(Ok(held)) => {
                return format!("{} of {} taken over", leases.len() - held, leases.len());
            }
            Ok(Err(e)) => {
                s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(queue = s.queue.name(), error = %e, "lease renewal failed");
                if tokio::time::Instant::now() >= expires {
                    return format!("renewal failed until the leases expired: {e}");
                }
            }
            Err(_) => return "renewal did not answer before the leases expired".to_owned(),
        }
    }
}

fn batch_failed(s: &Shared, batch: &[Task], e: &BatchError, now: u64) -> Vec<Settle> {
    s.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    s.failing.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(queue = s.queue.name(), tasks = batch.len(), error = %e, "batch failed");
    batch
        .iter()
        .map(|t| retry_or_bury(s, t, None, &e.0, now))
        .collect()
}

fn settle_outcome(s: &Shared, t: &Task, o: Outcome, now: u64) -> Settle {
    match o {
        Outcome::Done => {
            s.stats.done.fetch_add(1, Ordering::Relaxed);
            Settle {
                lease: t.lease(),
                action: Action::Ack,
            }
        }
        Outcome::Retry(after) => retry_or_bury(s, t, after, "the handler asked for a retry", now),
        Outcome::Fail(reason) => {
            s.stats.dead.fetch_add(1, Ordering::Relaxed);
            Settle {
                lease: t.lease(),
                action: Action::DeadLetter(reason),
            }
        }
    }
}

/// Schedules another attempt, or dead-letters once attempts are spent.
fn retry_or_bury(s: &Shared, t: &Task, after: Option<Duration>, why: &str, now: u64) -> Settle {
    let action = if t.attempt >= s.cfg.max_attempts {
        s.stats.dead.fetch_add(1, Ordering::Relaxed);
        Action::DeadLetter(format!("gave up after {} attempts: {why}", t.attempt))
    } else {
        s.stats.retried.fetch_add(1, Ordering::Relaxed);
        let wait = after.unwrap_or_else(|| s.cfg.retry_backoff.delay(t.attempt));
        Action::RetryAt(clock::after(now, wait))
    };
    Settle {
        lease: t.lease(),
        action,
    }
}

/// Returns unstarted or abandoned tasks to the queue, this delivery not counted.
pub(super) async fn give_back(s: &Shared, batch: &[Task]) {
    if batch.is_empty() {
        return;
    }
    let leases: Vec<Lease> = batch.iter().map(Task::lease).collect();
    match s.queue.release(&leases).await {
        Ok(r) => {
            s.stats
                .released
                .fetch_add(r.applied as u64, Ordering::Relaxed);
        }
        Err(e) => {
            s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(queue = s.queue.name(), error = %e, tasks = leases.len(), "returning tasks failed; they come back when their leases expire");
        }
    }
}

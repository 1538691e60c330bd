//! The dispatcher: takes a worker permit, then leases and buffers tasks
//! until a trigger sends the batch (full, urgent, max latency, sweep tick),
//! and starts workers on demand.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::config::PoolConfig;
use super::pause::PauseGate;
use super::worker::{give_back, worker};
use super::{Job, Shared, lock};
use crate::backoff::Backoff;
use crate::queue::Task;

/// Why a batch went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Full,
    Urgent,
    Latency,
    Interval,
}

pub(super) async fn dispatch_loop(s: Arc<Shared>, jobs: async_channel::Sender<Job>) {
    let permits = Arc::new(Semaphore::new(s.cfg.max_workers));
    let poll = Backoff::new(Duration::from_millis(5), s.cfg.poll_interval_max);
    let error_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut empty_polls = 0u32;
    let mut errors = 0u32;
    let mut sweep = s.cfg.interval.map(|i| (i, tokio::time::Instant::now() + i));
    let mut gate = PauseGate::default();
    'outer: loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = s.stop.cancelled() => break,
        };
        // Circuit breaker: while batches keep failing as a whole, lease
        // more slowly (the failed tasks wait out their own retry back-off).
        let failing = s.failing.load(Ordering::Relaxed);
        if failing > 0 {
            tokio::select! {
                _ = tokio::time::sleep(s.cfg.failure_pause.delay(failing)) => {}
                _ = s.stop.cancelled() => break,
            }
        }
        let mut batch: Vec<Task> = Vec::new();
        // Enqueue time of the oldest buffered task, for the max-latency trigger.
        let mut oldest_ms = u64::MAX;
        let mut asked = false;
        let mut bytes = 0usize;
        let mut full_by_bytes = false;
        let reason = loop {
            if s.stop.is_cancelled() {
                give_back(&s, &batch).await;
                break 'outer;
            }
            // A paused queue is not leased from; what is buffered still goes.
            let paused = gate.paused(&*s.queue).await;
            let leased = if paused {
                Ok(Vec::new())
            } else {
                s.queue
                    .lease(s.cfg.batch_size - batch.len(), s.cfg.lease_ttl)
                    .await
            };
            match leased {
                Ok(mut got) => {
                    errors = 0;
                    // What does not fit the byte bound goes straight back,
                    // unstarted; a batch always takes its first task.
                    let room = s.cfg.max_batch_bytes.saturating_sub(bytes);
                    let fits = fitting(&got, batch.is_empty(), room);
                    let over = got.split_off(fits);
                    if !over.is_empty() {
                        full_by_bytes = true;
                        give_back(&s, &over).await;
                    }
                    bytes += got.iter().map(|t| t.payload.len()).sum::<usize>();
                    full_by_bytes |= bytes >= s.cfg.max_batch_bytes;
                    let now_ms = s.clock.now_ms();
                    for t in &got {
                        // First deliveries only: a retry's enqueue time is
                        // its first push, so its wait would count its runs.
                        if t.attempt == 1 {
                            s.wait.observe(Duration::from_millis(
                                now_ms.saturating_sub(t.enqueued_at_ms),
                            ));
                        }
                        oldest_ms = oldest_ms.min(t.enqueued_at_ms);
                        asked |= is_urgent(&s.cfg, t);
                    }
                    batch.extend(got);
                }
                Err(e) => {
                    errors += 1;
                    s.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = error_backoff.delay(errors);
                    tracing::error!(queue = s.queue.name(), error = %e, retry_in = ?wait, "lease failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = s.stop.cancelled() => continue,
                    }
                }
            }
            let now = tokio::time::Instant::now();
            // A sweep tick that finds the buffer empty calls nobody; the
            // next tick is then one interval on.
            let swept = match &mut sweep {
                Some((every, next)) if *next <= now => {
                    while *next <= now {
                        *next += *every;
                    }
                    !batch.is_empty()
                }
                _ => false,
            };
            if batch.len() >= s.cfg.batch_size || full_by_bytes {
                break Flush::Full;
            }
            if asked && !batch.is_empty() {
                break Flush::Urgent;
            }
            asked = false;
            if swept {
                break Flush::Interval;
            }
            let mut wait = if batch.is_empty() {
                empty_polls = empty_polls.saturating_add(1);
                poll.delay(empty_polls)
            } else {
                empty_polls = 0;
                let age = Duration::from_millis(s.clock.now_ms().saturating_sub(oldest_ms));
                match s.cfg.max_latency.checked_sub(age) {
                    Some(left) if !left.is_zero() => left,
                    _ => break Flush::Latency,
                }
            };
            if let Some((_, next)) = sweep {
                wait = wait.min(next - now);
            }
            if paused {
                wait = wait.min(gate.next_check_in());
            }
            tokio::select! {
                _ = s.queue.wait_for_work(wait) => {}
                _ = s.flush_now.notified() => asked = true,
                _ = s.stop.cancelled() => {}
            }
        };
        empty_polls = 0;
        let counter = match reason {
            Flush::Full => &s.stats.flush_full,
            Flush::Urgent => &s.stats.flush_urgent,
            Flush::Latency => &s.stats.flush_latency,
            Flush::Interval => &s.stats.flush_interval,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if jobs
            .send(Job {
                batch,
                _permit: permit,
            })
            .await
            .is_err()
        {
            break;
        }
        spawn_worker_if_needed(&s, &jobs);
    }
    jobs.close();
}

/// How many of `tasks`, in order, fit in `room` payload bytes; at least one
/// when the batch is still `empty`.
fn fitting(tasks: &[Task], empty: bool, room: usize) -> usize {
    let mut used = 0usize;
    for (i, t) in tasks.iter().enumerate() {
        used = used.saturating_add(t.payload.len());
        if used > room && !(empty && i == 0) {
            return i;
        }
    }
    tasks.len()
}

fn is_urgent(cfg: &PoolConfig, t: &Task) -> bool {
    match (&cfg.urgent_key_prefix, &t.unique_key) {
        (Some(p), Some(k)) => k.starts_with(p.as_str()),
        _ => false,
    }
}

/// Starts a worker when queued batches outnumber idle workers.
fn spawn_worker_if_needed(s: &Arc<Shared>, jobs: &async_channel::Sender<Job>) {
    let mut c = lock(&s.counts);
    if jobs.len() > c.idle && c.workers < s.cfg.max_workers {
        c.workers += 1;
        s.workers_tx.send_replace(c.workers);
        s.stats
            .peak_workers
            .fetch_max(c.workers as u64, Ordering::Relaxed);
        let mut set = lock(&s.workers);
        while set.try_join_next().is_some() {}
        set.spawn(worker(s.clone()));
    }
}

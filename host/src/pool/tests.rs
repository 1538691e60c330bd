//! Worker-pool tests modelled on Gitea's worker-queue tests, on tokio's
//! paused clock so back-off, flush triggers and idle time pass instantly.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{Semaphore, mpsc};

use super::*;
use crate::clock::TokioClock;
use crate::queue::memory::{MemoryOptions, MemoryQueue};
use crate::queue::{NewTask, QueueStats};

pub(super) fn memory_queue(clock: Arc<dyn Clock>) -> Arc<dyn BaseQueue> {
    Arc::new(MemoryQueue::new("pool-test", MemoryOptions::default(), clock).unwrap())
}

fn text(t: &Task) -> String {
    String::from_utf8_lossy(&t.payload).into_owned()
}

/// Fails each task the number of times its payload says, counting calls.
struct Flaky {
    calls: Mutex<HashMap<u64, u32>>,
    seen: mpsc::UnboundedSender<u64>,
}

#[async_trait]
impl BatchHandler for Flaky {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let mut calls = self.calls.lock().unwrap();
        Ok(batch
            .iter()
            .map(|t| {
                let n = calls.entry(t.id).or_default();
                *n += 1;
                let _ = self.seen.send(t.id);
                let fails: u32 = text(t).parse().unwrap();
                if *n > fails {
                    Outcome::Done
                } else {
                    Outcome::Retry(None)
                }
            })
            .collect())
    }
}

#[tokio::test(start_paused = true)]
async fn unhandled_tasks_rerun_exactly_as_often_as_they_failed() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    // Failure counts 0..=4 repeated, plus five tasks that never succeed.
    let mut fails: Vec<u32> = (0..60).map(|i| i % 5).collect();
    fails.extend([99; 5]);
    let tasks = fails.iter().map(|f| NewTask::new(f.to_string())).collect();
    let ids: Vec<u64> = queue
        .push_batch(tasks)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id())
        .collect();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = Arc::new(Flaky {
        calls: Mutex::default(),
        seen: seen_tx,
    });
    let cfg = PoolConfig {
        batch_size: 7,
        max_workers: 3,
        max_attempts: 6,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler.clone(), cfg, clock).unwrap();
    let expected_calls: u32 = fails.iter().map(|&f| if f == 99 { 6 } else { f + 1 }).sum();
    for _ in 0..expected_calls {
        seen.recv().await.unwrap();
    }
    let stats = pool.shutdown().await;
    {
        let calls = handler.calls.lock().unwrap();
        for (id, &f) in ids.iter().zip(&fails) {
            let want = if f == 99 { 6 } else { f + 1 };
            assert_eq!(calls[id], want, "task {id} failing {f} times");
        }
    }
    assert_eq!(stats.done, 60);
    assert_eq!(stats.dead, 5);
    assert_eq!(
        stats.retried,
        fails
            .iter()
            .map(|&f| if f == 99 { 5 } else { f } as u64)
            .sum::<u64>()
    );
    let q = queue.stats().await.unwrap();
    assert_eq!(
        q,
        QueueStats {
            dead: 5,
            ..QueueStats::default()
        }
    );
    let dead = queue.dead_letters(10).await.unwrap();
    assert!(
        dead.iter()
            .all(|d| d.reason.contains("gave up after 6 attempts")),
        "{dead:?}"
    );
}

/// Holds every batch until the gate opens; reports each start.
struct Gated {
    gate: Arc<Semaphore>,
    started: mpsc::UnboundedSender<usize>,
}

impl Gated {
    /// A handler behind `gate`; the receiver hears each batch's size as
    /// it starts.
    fn new(gate: Arc<Semaphore>) -> (Arc<Self>, mpsc::UnboundedReceiver<usize>) {
        let (started, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { gate, started }), rx)
    }
}

#[async_trait]
impl BatchHandler for Gated {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let _ = self.started.send(batch.len());
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| BatchError(e.to_string()))?;
        Ok(vec![Outcome::Done; batch.len()])
    }
}

#[tokio::test(start_paused = true)]
async fn workers_grow_to_max_under_load_and_shrink_when_idle() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    let gate = Arc::new(Semaphore::new(0));
    let (handler, mut started) = Gated::new(gate.clone());
    let cfg = PoolConfig {
        batch_size: 1,
        max_workers: 4,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock).unwrap();
    let mut workers = pool.workers();
    queue
        .push_batch((0..10).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    workers.wait_for(|&n| n == 4).await.unwrap();
    for _ in 0..4 {
        started.recv().await.unwrap();
    }
    // Lease only what a worker can take: the other six stay pending.
    let s = queue.stats().await.unwrap();
    assert_eq!((s.leased, s.pending), (4, 6));
    assert!(started.try_recv().is_err(), "no fifth batch while four run");
    gate.add_permits(10);
    for _ in 4..10 {
        started.recv().await.unwrap();
    }
    workers.wait_for(|&n| n == 1).await.unwrap();
    let stats = pool.stats().snapshot();
    assert_eq!(stats.peak_workers, 4);
    assert_eq!(stats.done, 10);
    // One worker stays however long the pool idles.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(*workers.borrow(), 1);
    pool.shutdown().await;
    assert_eq!(*workers.borrow(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_flight_tasks_stay_bounded_by_workers_times_batch() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    struct Watch {
        queue: Arc<dyn BaseQueue>,
        max_leased: Mutex<u64>,
        done: mpsc::UnboundedSender<usize>,
    }
    #[async_trait]
    impl BatchHandler for Watch {
        async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
            let leased = self.queue.stats().await.unwrap().leased;
            {
                let mut m = self.max_leased.lock().unwrap();
                *m = (*m).max(leased);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = self.done.send(batch.len());
            Ok(vec![Outcome::Done; batch.len()])
        }
    }
    queue
        .push_batch((0..2_000).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handler = Arc::new(Watch {
        queue: queue.clone(),
        max_leased: Mutex::new(0),
        done: done_tx,
    });
    let cfg = PoolConfig {
        batch_size: 10,
        max_workers: 3,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler.clone(), cfg, clock).unwrap();
    let mut n = 0;
    while n < 2_000 {
        n += done.recv().await.unwrap();
    }
    pool.shutdown().await;
    let max = *handler.max_leased.lock().unwrap();
    assert!(
        max <= 30,
        "at most workers x batch leased at once, saw {max}"
    );
    assert!(max >= 20, "the pool did run batches in parallel, saw {max}");
}

#[tokio::test(start_paused = true)]
async fn partial_batch_waits_for_debounce_then_goes() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    let (handler, mut rx) = Gated::new(Arc::new(Semaphore::new(1_000)));
    let cfg = PoolConfig {
        batch_size: 10,
        max_latency: Duration::from_millis(100),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock).unwrap();
    queue
        .push_batch((0..3).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    queue
        .push_batch((0..4).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    assert_eq!(
        rx.recv().await,
        Some(7),
        "tasks pushed within the debounce share a batch"
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    queue
        .push_batch((0..10).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let t1 = tokio::time::Instant::now();
    assert_eq!(rx.recv().await, Some(10));
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "a full batch goes at once"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn wrong_number_of_outcomes_fails_the_batch() {
    struct Short;
    #[async_trait]
    impl BatchHandler for Short {
        async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
            Ok(vec![Outcome::Done; batch.len() - 1])
        }
    }
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    queue.push(NewTask::new("x")).await.unwrap();
    let cfg = PoolConfig {
        max_attempts: 2,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), Arc::new(Short), cfg, clock).unwrap();
    let mut stats;
    loop {
        stats = queue.stats().await.unwrap();
        if stats.dead == 1 {
            break;
        }
        queue.wait_for_work(Duration::from_millis(100)).await;
    }
    pool.shutdown().await;
    let dead = queue.dead_letters(1).await.unwrap();
    assert!(
        dead[0]
            .reason
            .contains("answered 0 outcomes for a batch of 1"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].task.attempt, 2);
}

#[tokio::test]
async fn shutdown_returns_leased_tasks_and_a_reopened_queue_holds_them() {
    use crate::queue::QueueStore;
    use crate::queue::disk::{DiskOptions, DiskStore};
    let dir = tempfile::tempdir().unwrap();
    let clock = crate::clock::system();
    let store = DiskStore::open(dir.path(), DiskOptions::default(), clock.clone()).unwrap();
    let queue = store.queue("shutdown").unwrap();
    queue
        .push_batch((0..20).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let (handler, mut started) = Gated::new(Arc::new(Semaphore::new(0)));
    let cfg = PoolConfig {
        batch_size: 5,
        max_workers: 2,
        shutdown_grace: Duration::from_millis(50),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock.clone()).unwrap();
    let waits = pool.wait_times();
    started.recv().await.unwrap();
    started.recv().await.unwrap();
    assert_eq!(queue.stats().await.unwrap().leased, 10);
    let stats = pool.shutdown().await;
    assert_eq!(stats.done, 0);
    // Handed back unprocessed: counted as released, not as anything else.
    assert_eq!((stats.released, stats.lost_leases), (10, 0));
    assert_eq!(waits.snapshot().count(), 10, "one wait per first lease");
    store.close().await;
    drop((queue, store));

    let store = DiskStore::open(dir.path(), DiskOptions::default(), clock).unwrap();
    let queue = store.queue("shutdown").unwrap();
    let s = queue.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (20, 0), "every task is back in line");
    let all = queue.lease(100, Duration::from_secs(10)).await.unwrap();
    assert_eq!(all.len(), 20);
    assert!(
        all.iter().all(|t| t.attempt == 1),
        "an abandoned delivery is not counted"
    );
    store.close().await;
}

/// Records when each batch reached the handler and how big it was.
struct Stamp {
    t0: tokio::time::Instant,
    calls: mpsc::UnboundedSender<(Duration, usize)>,
}

#[async_trait]
impl BatchHandler for Stamp {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let _ = self.calls.send((self.t0.elapsed(), batch.len()));
        Ok(vec![Outcome::Done; batch.len()])
    }
}

/// A pool with act_runner's defaults (100 rows, 3 s, 5 s) unless overridden.
fn trigger_pool(
    cfg: PoolConfig,
) -> (
    Arc<dyn BaseQueue>,
    WorkerPool,
    mpsc::UnboundedReceiver<(Duration, usize)>,
) {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Stamp {
        t0: tokio::time::Instant::now(),
        calls: tx,
    });
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock).unwrap();
    (queue, pool, rx)
}

fn act_runner_triggers() -> PoolConfig {
    PoolConfig {
        batch_size: 100,
        max_latency: Duration::from_secs(3),
        interval: Some(Duration::from_secs(5)),
        urgent_key_prefix: Some("urgent:".into()),
        ..PoolConfig::default()
    }
}

async fn push_at(queue: &Arc<dyn BaseQueue>, t0: tokio::time::Instant, at_ms: u64, n: usize) {
    tokio::time::sleep_until(t0 + Duration::from_millis(at_ms)).await;
    queue
        .push_batch((0..n).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap();
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[tokio::test(start_paused = true)]
async fn max_latency_flushes_the_oldest_task_in_time() {
    let t0 = tokio::time::Instant::now();
    let cfg = PoolConfig {
        interval: None,
        ..act_runner_triggers()
    };
    let (queue, pool, mut calls) = trigger_pool(cfg);
    // One line at 1 s, a second at 2.5 s: both go when the first is 3 s old.
    push_at(&queue, t0, 1_000, 1).await;
    push_at(&queue, t0, 2_500, 1).await;
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!(n, 2);
    assert!((4_000..=4_010).contains(&ms(at)), "flushed at {at:?}");
    let stats = pool.shutdown().await;
    assert_eq!((stats.flush_latency, stats.batches), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn interval_sweeps_what_is_buffered_at_each_tick() {
    let t0 = tokio::time::Instant::now();
    // Max latency out of the way (it must stay below the lease).
    let cfg = PoolConfig {
        max_latency: Duration::from_secs(3_600),
        lease_ttl: Duration::from_secs(7_200),
        ..act_runner_triggers()
    };
    let (queue, pool, mut calls) = trigger_pool(cfg);
    push_at(&queue, t0, 1_000, 3).await;
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!((ms(at), n), (5_000, 3), "first tick at 5 s");
    push_at(&queue, t0, 12_000, 2).await;
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!(
        (ms(at), n),
        (15_000, 2),
        "the empty tick at 10 s called nobody; the next one sweeps"
    );
    let stats = pool.shutdown().await;
    assert_eq!((stats.flush_interval, stats.batches), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_and_an_urgent_task_go_at_once() {
    let t0 = tokio::time::Instant::now();
    let (queue, pool, mut calls) = trigger_pool(act_runner_triggers());
    push_at(&queue, t0, 1_000, 100).await;
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!((ms(at), n), (1_000, 100), "batch_size flushes at once");

    push_at(&queue, t0, 2_000, 1).await;
    tokio::time::sleep_until(t0 + Duration::from_millis(2_200)).await;
    queue
        .push(NewTask {
            unique_key: Some("urgent:step-2-started".into()),
            ..NewTask::new("step")
        })
        .await
        .unwrap();
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!(
        (ms(at), n),
        (2_200, 2),
        "an urgent task takes the buffered one with it"
    );

    push_at(&queue, t0, 3_000, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.flush();
    let (at, n) = calls.recv().await.unwrap();
    assert_eq!((ms(at), n), (3_100, 1), "an in-process flush goes at once");
    let stats = pool.shutdown().await;
    assert_eq!(
        (stats.flush_full, stats.flush_urgent, stats.batches),
        (1, 2, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn no_trigger_calls_the_handler_on_an_empty_buffer() {
    let cfg = PoolConfig {
        max_latency: Duration::from_millis(10),
        interval: Some(Duration::from_millis(100)),
        ..act_runner_triggers()
    };
    let (_queue, pool, mut calls) = trigger_pool(cfg.clone());
    // A flush asked for with nothing buffered is dropped, not carried over.
    pool.flush();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(calls.try_recv().is_err(), "no call in 60 s of ticks");
    let stats = pool.shutdown().await;
    assert_eq!(stats.batches, 0);
}

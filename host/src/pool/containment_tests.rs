//! Containment in the pool: a lost lease stops its call, a panicking
//! handler fails only its batch, batches stay within their byte bound.

use std::sync::Mutex;

use super::tests::memory_queue;
use super::*;
use crate::clock::TokioClock;
use crate::queue::NewTask;

/// Hangs in every call until dropped; says when it starts and when it is
/// dropped.
struct Hang {
    entered: Arc<tokio::sync::Notify>,
    dropped: Arc<tokio::sync::Notify>,
}

struct NotifyOnDrop(Arc<tokio::sync::Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[async_trait]
impl BatchHandler for Hang {
    async fn handle(&self, _batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let _guard = NotifyOnDrop(self.dropped.clone());
        self.entered.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_call_and_settles_nothing() {
    let clock = crate::clock::ManualClock::new(1_000_000);
    let queue = memory_queue(clock.clone());
    queue.push(NewTask::new("x")).await.unwrap();
    let (entered, dropped) = (Arc::default(), Arc::default());
    let handler = Arc::new(Hang {
        entered: Arc::clone(&entered),
        dropped: Arc::clone(&dropped),
    });
    let cfg = PoolConfig {
        batch_size: 1,
        max_workers: 1,
        lease_ttl: Duration::from_secs(30),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock.clone()).unwrap();
    entered.notified().await;
    // The queue's clock jumps past the lease (a long GC pause, a frozen VM):
    // another holder takes the task.
    clock.advance(Duration::from_secs(31));
    let other = queue.lease(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(other.len(), 1, "the expired task is handed out again");
    // The next renewal finds the lease gone and stops the call.
    dropped.notified().await;
    let stats = pool.shutdown().await;
    assert_eq!((stats.done, stats.lost_leases), (0, 1));
    let q = queue.stats().await.unwrap();
    assert_eq!(q.leased, 1, "the other holder still has it: {q:?}");
}

/// Panics on its first call, then answers `done`.
struct PanicsOnce(std::sync::atomic::AtomicBool);

#[async_trait]
impl BatchHandler for PanicsOnce {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("boom from outside input");
        }
        Ok(vec![Outcome::Done; batch.len()])
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_its_batch_and_the_pool_goes_on() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    queue.push(NewTask::new("x")).await.unwrap();
    let cfg = PoolConfig {
        max_workers: 1,
        max_attempts: 3,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(
        queue.clone(),
        Arc::new(PanicsOnce(Default::default())),
        cfg,
        clock,
    )
    .unwrap();
    while !queue.is_empty().await.unwrap() {
        queue.wait_for_work(Duration::from_millis(50)).await;
    }
    let stats = pool.shutdown().await;
    assert_eq!(
        (stats.failed_batches, stats.retried, stats.done, stats.dead),
        (1, 1, 1, 0)
    );
}

/// Records the payload bytes of every batch it is handed.
struct Sizes(Mutex<Vec<usize>>);

#[async_trait]
impl BatchHandler for Sizes {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let bytes = batch.iter().map(|t| t.payload.len()).sum();
        self.0.lock().unwrap().push(bytes);
        Ok(vec![Outcome::Done; batch.len()])
    }
}

#[tokio::test(start_paused = true)]
async fn batches_stay_within_max_batch_bytes() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    let mut tasks: Vec<NewTask> = (0..10).map(|_| NewTask::new(vec![0u8; 1024])).collect();
    // Larger than the bound on its own: it still goes, alone.
    tasks.push(NewTask::new(vec![0u8; 5000]));
    queue.push_batch(tasks).await.unwrap();
    let sizes = Arc::new(Sizes(Mutex::default()));
    let cfg = PoolConfig {
        batch_size: 100,
        max_workers: 1,
        max_batch_bytes: 3 * 1024,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), sizes.clone(), cfg, clock).unwrap();
    while !queue.is_empty().await.unwrap() {
        queue.wait_for_work(Duration::from_millis(50)).await;
    }
    let stats = pool.shutdown().await;
    assert_eq!(stats.done, 11);
    let seen = sizes.0.lock().unwrap().clone();
    assert!(seen.contains(&5000), "{seen:?}");
    assert!(seen.iter().all(|&b| b <= 3 * 1024 || b == 5000), "{seen:?}");
}

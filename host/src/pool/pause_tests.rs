//! A paused queue is not leased from; a resumed one is, within a second.

use tokio::sync::mpsc;

use super::tests::memory_queue;
use super::*;
use crate::clock::TokioClock;
use crate::queue::NewTask;

/// Marks every task done and reports each id handled.
struct Record(mpsc::UnboundedSender<u64>);

#[async_trait]
impl BatchHandler for Record {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        for t in batch {
            let _ = self.0.send(t.id);
        }
        Ok(vec![Outcome::Done; batch.len()])
    }
}

#[tokio::test(start_paused = true)]
async fn pause_stops_leasing_and_resume_restarts_it_within_a_second() {
    let clock = TokioClock::new(1_000);
    let queue = memory_queue(clock.clone());
    let admin = queue.admin().expect("memory queue has admin");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let pool = WorkerPool::start(
        queue.clone(),
        Arc::new(Record(tx)),
        PoolConfig::default(),
        clock,
    )
    .unwrap();
    queue.push(NewTask::new("before")).await.unwrap();
    seen.recv().await.expect("served while running");

    admin.set_paused(true).await.unwrap();
    // The pool may trust its last read of the flag for up to a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    queue
        .push_batch((0..10).map(|i| NewTask::new(format!("t{i}"))).collect())
        .await
        .unwrap();
    // Paused clock: a minute passes instantly, with every poll in between.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(seen.try_recv().is_err(), "nothing leased while paused");
    let s = queue.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (10, 0));

    admin.set_paused(false).await.unwrap();
    let resumed = tokio::time::Instant::now();
    for _ in 0..10 {
        seen.recv().await.expect("served after resume");
    }
    let took = resumed.elapsed();
    assert!(took <= Duration::from_secs(1), "resumed after {took:?}");
    pool.shutdown().await;
    assert!(queue.is_empty().await.unwrap());
}

//! Poller schedule on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::*;
use crate::clock::TokioClock;
use crate::queue::memory::{MemoryOptions, MemoryQueue};

/// Answers polls from a script (then empty), reporting when it was asked.
struct Scripted {
    t0: tokio::time::Instant,
    script: Mutex<VecDeque<Result<usize, String>>>,
    asked: mpsc::UnboundedSender<(u64, usize)>,
}

#[async_trait]
impl Source for Scripted {
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String> {
        let _ = self.asked.send((self.t0.elapsed().as_millis() as u64, max));
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(0));
        next.map(|n| (0..n).map(|i| NewTask::new(format!("{i}"))).collect())
    }
}

fn start(
    script: Vec<Result<usize, String>>,
    cfg: SourceConfig,
) -> (
    Arc<dyn BaseQueue>,
    Poller,
    mpsc::UnboundedReceiver<(u64, usize)>,
) {
    let clock = TokioClock::new(1_000);
    let queue: Arc<dyn BaseQueue> =
        Arc::new(MemoryQueue::new("src", MemoryOptions::default(), clock).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let source = Arc::new(Scripted {
        t0: tokio::time::Instant::now(),
        script: Mutex::new(script.into()),
        asked: tx,
    });
    let poller = Poller::start(source, queue.clone(), cfg).unwrap();
    (queue, poller, rx)
}

fn no_jitter() -> SourceConfig {
    SourceConfig {
        poll_interval: Duration::from_secs(2),
        poll_interval_max: Duration::from_secs(60),
        jitter: 0.0,
        capacity: 1_000,
    }
}

#[tokio::test(start_paused = true)]
async fn empty_polls_double_the_interval_up_to_the_cap() {
    let (_q, poller, mut asked) = start(vec![], no_jitter());
    let mut at = Vec::new();
    for _ in 0..9 {
        at.push(asked.recv().await.unwrap().0 / 1_000);
    }
    // Polls first, then waits 2, 4, 8, 16, 32, 60, 60, 60 s.
    assert_eq!(at, [0, 2, 6, 14, 30, 62, 122, 182, 242]);
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_and_work_resets_and_polls_at_once() {
    let script = vec![
        Err("connection refused".into()),
        Err("connection refused".into()),
        Ok(2),
        Ok(1),
        Ok(0),
    ];
    let (queue, poller, mut asked) = start(script, no_jitter());
    let mut at = Vec::new();
    for _ in 0..7 {
        at.push(asked.recv().await.unwrap().0 / 1_000);
    }
    // err (wait 2), err (wait 4), 2 tasks (again at once), 1 task (at once),
    // empty (wait 2: the back-off starts over), empty (wait 4).
    assert_eq!(at, [0, 2, 6, 6, 6, 8, 12]);
    assert_eq!(queue.stats().await.unwrap().pending, 3);
    let s = poller.stats().clone();
    poller.shutdown().await;
    assert_eq!(s.failed.load(Ordering::Relaxed), 2);
    assert_eq!(s.enqueued.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_each_wait_within_twenty_percent() {
    let cfg = SourceConfig {
        jitter: 0.2,
        ..no_jitter()
    };
    let (_q, poller, mut asked) = start(vec![], cfg);
    let mut prev = asked.recv().await.unwrap().0;
    let b = cfg.backoff();
    let mut spread = std::collections::BTreeSet::new();
    for n in 1..=40u32 {
        let now = asked.recv().await.unwrap().0;
        let gap = Duration::from_millis(now - prev);
        let (lo, hi) = b.bounds(n);
        // Millisecond rounding of the paused clock.
        assert!(
            gap + Duration::from_millis(1) >= lo && gap <= hi + Duration::from_millis(1),
            "wait {n}: {gap:?} not in {lo:?}..{hi:?}"
        );
        if n >= 7 {
            spread.insert(gap.as_millis());
        }
        prev = now;
    }
    assert!(spread.len() > 10, "capped waits are spread, not in step");
    poller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn polls_ask_only_for_the_room_left_under_capacity() {
    let cfg = SourceConfig {
        capacity: 5,
        ..no_jitter()
    };
    let (queue, poller, mut asked) = start(vec![Ok(3), Ok(3), Ok(3)], cfg);
    assert_eq!(asked.recv().await.unwrap(), (0, 5));
    assert_eq!(asked.recv().await.unwrap(), (0, 2), "3 outstanding");
    // Full now (the second answer was cut to 2): no poll until work is done.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(asked.try_recv().is_err(), "no poll while at capacity");
    assert_eq!(queue.stats().await.unwrap().pending, 5);
    let done = queue.lease(2, Duration::from_secs(60)).await.unwrap();
    queue
        .settle(
            done.iter()
                .map(|t| crate::queue::Settle {
                    lease: t.lease(),
                    action: crate::queue::Action::Ack,
                })
                .collect(),
        )
        .await
        .unwrap();
    let (_, max) = asked.recv().await.unwrap();
    assert_eq!(max, 2);
    poller.shutdown().await;
}

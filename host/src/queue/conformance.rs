//! One conformance suite, run against every backend.
//!
//! Modelled on Gitea's `testQueueBasic`: each check is a plain async function
//! taking a [`Fixture`], and `backend_suite!` instantiates all of them for a
//! backend, so a new backend gets the whole suite by adding one line.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::disk::{DiskOptions, DiskStore};
use super::memory::{MemoryOptions, MemoryQueue};
use super::redis::{RedisOptions, RedisStore};
use super::*;
use crate::clock::{Clock, ManualClock};

const TTL: Duration = Duration::from_secs(10);
const T0: u64 = 1_700_000_000_000;

/// A queue under test, its clock, and whatever keeps it alive.
pub(crate) struct Fixture {
    pub queue: Arc<dyn BaseQueue>,
    pub clock: Arc<ManualClock>,
    _keep: Option<(tempfile::TempDir, Arc<DiskStore>)>,
    _redis: Option<taskhost_fixtures::redis::RedisServer>,
}

pub(crate) fn memory(capacity: Option<usize>) -> Fixture {
    let clock = ManualClock::new(T0);
    let opts = MemoryOptions {
        capacity: capacity.unwrap_or(100_000),
        push_timeout: Duration::from_millis(50),
        ..MemoryOptions::default()
    };
    let q = MemoryQueue::new("conformance", opts, clock.clone()).expect("valid options");
    Fixture {
        queue: Arc::new(q),
        clock,
        _keep: None,
        _redis: None,
    }
}

pub(crate) fn disk(capacity: Option<usize>) -> Fixture {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = DiskOptions {
        capacity,
        push_timeout: Duration::from_millis(50),
        ..DiskOptions::default()
    };
    let store = DiskStore::open(dir.path(), opts, clock.clone()).expect("open store");
    let queue = store.queue("conformance").expect("queue");
    Fixture {
        queue,
        clock,
        _keep: Some((dir, store)),
        _redis: None,
    }
}

/// A queue on a private redis-server started for this test.
pub(crate) fn redis(capacity: Option<usize>) -> Fixture {
    let server = taskhost_fixtures::redis::RedisServer::start().expect("start redis-server");
    let clock = ManualClock::new(T0);
    let opts = RedisOptions {
        capacity,
        push_timeout: Duration::from_millis(50),
        ..RedisOptions::default()
    };
    let store = RedisStore::open(&server.url(), opts, clock.clone()).expect("open store");
    Fixture {
        queue: store.queue("conformance").expect("queue"),
        clock,
        _keep: None,
        _redis: Some(server),
    }
}

async fn push_n(q: &dyn BaseQueue, n: usize) -> Vec<TaskId> {
    let tasks = (0..n).map(|i| NewTask::new(format!("task-{i}"))).collect();
    q.push_batch(tasks)
        .await
        .expect("push")
        .into_iter()
        .map(|p| match p {
            Pushed::Created(id) => id,
            Pushed::Duplicate(id) => panic!("unexpected duplicate {id}"),
        })
        .collect()
}

fn leases(tasks: &[Task]) -> Vec<Lease> {
    tasks.iter().map(Task::lease).collect()
}

pub(crate) async fn fifo_order(f: Fixture) {
    let q = &*f.queue;
    let ids = push_n(q, 20).await;
    let first = q.lease(5, TTL).await.unwrap();
    let second = q.lease(100, TTL).await.unwrap();
    let got: Vec<_> = first.iter().chain(&second).map(|t| t.id).collect();
    assert_eq!(got, ids, "tasks come out in push order");
    let payloads: Vec<_> = first.iter().map(|t| t.payload.clone()).collect();
    assert_eq!(payloads[0], b"task-0");
    assert_eq!(payloads[4], b"task-4");
    assert!(
        first
            .iter()
            .all(|t| t.attempt == 1 && &*t.queue == "conformance")
    );
    assert!(first.iter().all(|t| t.enqueued_at_ms == T0));
    assert!(q.lease(10, TTL).await.unwrap().is_empty(), "all leased");
}

pub(crate) async fn ack_removes(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 3).await;
    let got = q.lease(3, TTL).await.unwrap();
    assert_eq!(q.stats().await.unwrap().leased, 3);
    let s = q.ack(&leases(&got)).await.unwrap();
    assert_eq!(
        s,
        Settled {
            applied: 3,
            lost: 0
        }
    );
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
    assert_eq!(q.len().await.unwrap(), 0);
    let again = q.ack(&leases(&got)).await.unwrap();
    assert_eq!(again.lost, 3, "acking twice is refused");
}

pub(crate) async fn unique_keys(f: Fixture) {
    let q = &*f.queue;
    let a = q.push(NewTask::new("a").unique("k")).await.unwrap();
    let Pushed::Created(id) = a else {
        panic!("first push creates: {a:?}")
    };
    let b = q.push(NewTask::new("b").unique("k")).await.unwrap();
    assert_eq!(b, Pushed::Duplicate(id), "pending key collapses");
    let other = q.push(NewTask::new("c").unique("other")).await.unwrap();
    assert!(matches!(other, Pushed::Created(_)));
    let got = q.lease(1, TTL).await.unwrap();
    assert_eq!(got[0].payload, b"a", "the first push wins");
    let c = q.push(NewTask::new("c").unique("k")).await.unwrap();
    assert_eq!(c, Pushed::Duplicate(id), "a leased key still collapses");
    q.ack(&leases(&got)).await.unwrap();
    let d = q.push(NewTask::new("d").unique("k")).await.unwrap();
    assert!(
        matches!(d, Pushed::Created(n) if n != id),
        "acked key is free: {d:?}"
    );
    // Duplicates inside one batch collapse too.
    let batch = q
        .push_batch(vec![
            NewTask::new("x").unique("z"),
            NewTask::new("y").unique("z"),
        ])
        .await
        .unwrap();
    assert_eq!(batch[1], Pushed::Duplicate(batch[0].id()));
    assert_eq!(q.len().await.unwrap(), 3);
    // A batch mixing plain, keyed, delayed and repeated tasks.
    let mixed = q
        .push_batch(vec![
            NewTask::new("p"),
            NewTask::new("again").unique("z"),
            NewTask::new("later")
                .unique("w")
                .delayed(Duration::from_secs(60)),
            NewTask::new("w2").unique("w"),
        ])
        .await
        .unwrap();
    assert!(matches!(mixed[0], Pushed::Created(_)));
    assert_eq!(mixed[1], Pushed::Duplicate(batch[0].id()), "pending key");
    assert!(matches!(mixed[2], Pushed::Created(_)));
    assert_eq!(mixed[3], Pushed::Duplicate(mixed[2].id()), "delayed key");
    let s = q.stats().await.unwrap();
    assert_eq!((s.len(), s.delayed), (5, 1));
}

pub(crate) async fn lease_expiry(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 2).await;
    let first = q.lease(2, TTL).await.unwrap();
    assert!(q.lease(2, TTL).await.unwrap().is_empty());
    f.clock.advance(TTL - Duration::from_millis(1));
    assert!(
        q.lease(2, TTL).await.unwrap().is_empty(),
        "lease still valid"
    );
    assert_eq!(q.stats().await.unwrap().leased, 2);
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(
        q.stats().await.unwrap().pending,
        2,
        "expired leases count as pending"
    );
    let second = q.lease(2, TTL).await.unwrap();
    assert_eq!(
        second.iter().map(|t| t.id).collect::<Vec<_>>(),
        first.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    assert!(second.iter().all(|t| t.attempt == 2));
    let stale = q.ack(&leases(&first)).await.unwrap();
    assert_eq!(
        stale,
        Settled {
            applied: 0,
            lost: 2
        },
        "old holder lost its lease"
    );
    let fresh = q.ack(&leases(&second)).await.unwrap();
    assert_eq!(fresh.applied, 2);
    assert_eq!(q.len().await.unwrap(), 0);
}

pub(crate) async fn renew_extends(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 1).await;
    let got = q.lease(1, TTL).await.unwrap();
    f.clock.advance(Duration::from_secs(8));
    assert_eq!(q.renew(&leases(&got), TTL).await.unwrap(), 1);
    f.clock.advance(Duration::from_secs(8));
    assert!(
        q.lease(1, TTL).await.unwrap().is_empty(),
        "renewed lease holds"
    );
    f.clock.advance(Duration::from_secs(3));
    let again = q.lease(1, TTL).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        q.renew(&leases(&got), TTL).await.unwrap(),
        0,
        "lost lease cannot renew"
    );
}

pub(crate) async fn retry_delay(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 1).await;
    let got = q.lease(1, TTL).await.unwrap();
    let at = f.clock.now_ms() + 5_000;
    assert_eq!(q.retry(got[0].lease(), at).await.unwrap().applied, 1);
    let s = q.stats().await.unwrap();
    assert_eq!((s.delayed, s.pending, s.leased), (1, 0, 0));
    f.clock.advance(Duration::from_millis(4_999));
    assert!(
        q.lease(1, TTL).await.unwrap().is_empty(),
        "not before its time"
    );
    f.clock.advance(Duration::from_millis(1));
    let again = q.lease(1, TTL).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].attempt, 2);
}

pub(crate) async fn delayed_push(f: Fixture) {
    let q = &*f.queue;
    q.push(NewTask::new("later").delayed(Duration::from_secs(3)))
        .await
        .unwrap();
    push_n(q, 1).await;
    let now = q.lease(10, TTL).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].payload, b"task-0");
    f.clock.advance(Duration::from_secs(3));
    let later = q.lease(10, TTL).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].payload, b"later");
}

pub(crate) async fn dead_letter(f: Fixture) {
    let q = &*f.queue;
    q.push(NewTask::new("doomed").unique("d")).await.unwrap();
    let got = q.lease(1, TTL).await.unwrap();
    assert_eq!(
        q.dead_letter(got[0].lease(), "bad payload")
            .await
            .unwrap()
            .applied,
        1
    );
    let s = q.stats().await.unwrap();
    assert_eq!((s.len(), s.dead), (0, 1));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "bad payload");
    assert_eq!(dead[0].task.payload, b"doomed");
    assert_eq!(dead[0].task.id, got[0].id);
    assert!(q.lease(1, TTL).await.unwrap().is_empty());
    let again = q.push(NewTask::new("doomed").unique("d")).await.unwrap();
    assert!(
        matches!(again, Pushed::Created(_)),
        "dead-lettered key is free"
    );
}

pub(crate) async fn release_returns(f: Fixture) {
    let q = &*f.queue;
    let ids = push_n(q, 3).await;
    let got = q.lease(3, TTL).await.unwrap();
    assert_eq!(q.release(&leases(&got)).await.unwrap().applied, 3);
    let again = q.lease(3, TTL).await.unwrap();
    let mut got_ids: Vec<_> = again.iter().map(|t| t.id).collect();
    got_ids.sort();
    assert_eq!(got_ids, ids, "released tasks are visible at once");
    assert!(
        again.iter().all(|t| t.attempt == 1),
        "a release does not count"
    );
}

pub(crate) async fn full_queue(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 3).await;
    let err = q.push(NewTask::new("overflow")).await.unwrap_err();
    assert!(matches!(err, QueueError::Full { capacity: 3, .. }), "{err}");
    assert!(
        err.to_string().contains("conformance"),
        "error names the queue: {err}"
    );
    let err = q
        .push_batch((0..4).map(|i| NewTask::new(format!("{i}"))).collect())
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::BatchTooLarge { batch: 4, .. }),
        "{err}"
    );
    assert_eq!(q.len().await.unwrap(), 3);
    let got = q.lease(1, TTL).await.unwrap();
    q.ack(&leases(&got)).await.unwrap();
    q.push(NewTask::new("fits")).await.expect("room after ack");
    assert_eq!(q.len().await.unwrap(), 3);
}

pub(crate) async fn concurrent_leases_are_disjoint(f: Fixture) {
    let q = f.queue.clone();
    let ids: HashSet<_> = push_n(&*q, 500).await.into_iter().collect();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q.lease(7, TTL).await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                q.ack(&leases(&got)).await.unwrap();
                mine.extend(got.into_iter().map(|t| t.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for h in handles {
        for id in h.await.unwrap() {
            assert!(seen.insert(id), "task {id} leased twice");
        }
    }
    assert_eq!(seen, ids);
}

macro_rules! backend_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn fifo_order() {
                super::fifo_order($backend(None)).await
            }
            #[tokio::test]
            async fn ack_removes() {
                super::ack_removes($backend(None)).await
            }
            #[tokio::test]
            async fn unique_keys() {
                super::unique_keys($backend(None)).await
            }
            #[tokio::test]
            async fn lease_expiry() {
                super::lease_expiry($backend(None)).await
            }
            #[tokio::test]
            async fn renew_extends() {
                super::renew_extends($backend(None)).await
            }
            #[tokio::test]
            async fn retry_delay() {
                super::retry_delay($backend(None)).await
            }
            #[tokio::test]
            async fn delayed_push() {
                super::delayed_push($backend(None)).await
            }
            #[tokio::test]
            async fn dead_letter() {
                super::dead_letter($backend(None)).await
            }
            #[tokio::test]
            async fn release_returns() {
                super::release_returns($backend(None)).await
            }
            #[tokio::test]
            async fn full_queue() {
                super::full_queue($backend(Some(3))).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_leases_are_disjoint() {
                super::concurrent_leases_are_disjoint($backend(None)).await
            }
        }
    };
}

backend_suite!(memory);
backend_suite!(disk);
backend_suite!(redis);

/// The disk backend keeps everything across a close and reopen, leases included.
#[tokio::test]
async fn disk_persists_across_reopen() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), DiskOptions::default(), clock.clone()).unwrap();
    let q = store.queue("persist").unwrap();
    let ids = push_n(&*q, 10).await;
    q.push(NewTask::new("keyed").unique("key")).await.unwrap();
    let held = q.lease(3, TTL).await.unwrap();
    let dead = q.lease(1, TTL).await.unwrap();
    q.dead_letter(dead[0].lease(), "gone").await.unwrap();
    store.close().await;
    drop((q, store));

    let store = DiskStore::open(dir.path(), DiskOptions::default(), clock.clone()).unwrap();
    let q = store.queue("persist").unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.leased, s.dead), (7, 3, 1));
    assert_eq!(
        store.known_queues().await.unwrap(),
        vec!["persist".to_string()]
    );
    let dup = q.push(NewTask::new("again").unique("key")).await.unwrap();
    assert!(matches!(dup, Pushed::Duplicate(_)), "unique index survives");
    // A process that died holding leases: they come back after expiry.
    clock.advance(TTL);
    let all = q.lease(100, TTL).await.unwrap();
    let got: HashSet<_> = all.iter().map(|t| t.id).collect();
    let want: HashSet<_> = ids[..3].iter().chain(&ids[4..]).copied().collect();
    assert!(want.is_subset(&got), "every task but the dead one is back");
    assert_eq!(all.len(), 10, "9 plain tasks + the keyed one");
    assert!(
        held.iter()
            .all(|h| all.iter().any(|t| t.id == h.id && t.attempt == 2))
    );
    store.close().await;
}

/// Two stores on one file (two processes, in effect) share the queue.
#[tokio::test]
async fn disk_two_openers_share_one_queue() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let a = DiskStore::open(dir.path(), DiskOptions::default(), clock.clone()).unwrap();
    let b = DiskStore::open(dir.path(), DiskOptions::default(), clock.clone()).unwrap();
    let qa = a.queue("shared").unwrap();
    let qb = b.queue("shared").unwrap();
    push_n(&*qa, 4).await;
    let got_b = qb.lease(2, TTL).await.unwrap();
    let got_a = qa.lease(10, TTL).await.unwrap();
    assert_eq!(got_b.len() + got_a.len(), 4);
    assert!(got_b.iter().all(|t| got_a.iter().all(|u| u.id != t.id)));
    a.close().await;
    b.close().await;
}

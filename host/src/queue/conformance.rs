//! The conformance suite: the behaviour every queue backend must show.
//!
//! Each check is a public async function taking a [`Fixture`] (a queue on
//! the backend under test and the manual clock it reads), so a backend
//! anywhere, this crate or another, runs the whole suite with one
//! [`backend_suite!`](crate::backend_suite) line. Compiled for this crate's
//! tests and under the non-default `conformance` feature.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub mod admin;

use super::{BaseQueue, Lease, NewTask, Pushed, QueueError, QueueStats, Settled, Task, TaskId};
use crate::clock::{Clock, ManualClock};

/// The lease time the checks use.
pub const TTL: Duration = Duration::from_secs(10);
/// The time every fixture's clock starts at, ms since the epoch.
pub const T0: u64 = 1_700_000_000_000;
/// The most dead letters every fixture's queue keeps.
pub const DEAD_CAPACITY: usize = 3;

/// A queue under test, its clock, and whatever keeps it alive.
///
/// The queue is named `conformance`, reads `clock` (started at [`T0`]),
/// has a push timeout of tens of milliseconds and keeps at most
/// [`DEAD_CAPACITY`] dead letters.
pub struct Fixture {
    /// The queue under test.
    pub queue: Arc<dyn BaseQueue>,
    /// The clock the queue reads; checks advance it by hand.
    pub clock: Arc<ManualClock>,
    /// Dropped after the checks: stores, servers, directories.
    pub keep: Vec<Box<dyn Any + Send>>,
    /// The queue is split into shards: push order holds within a shard
    /// only, and capacity is split between the shards.
    pub sharded: bool,
}

impl Fixture {
    /// A fixture for `queue`, which reads `clock`.
    pub fn new(queue: Arc<dyn BaseQueue>, clock: Arc<ManualClock>) -> Self {
        Self {
            queue,
            clock,
            keep: Vec::new(),
            sharded: false,
        }
    }

    /// Marks the queue as split into shards (see [`Fixture::sharded`]).
    pub fn sharded(mut self) -> Self {
        self.sharded = true;
        self
    }

    /// Keeps `thing` alive until the check ends.
    pub fn keeping(mut self, thing: impl Any + Send) -> Self {
        self.keep.push(Box::new(thing));
        self
    }
}

/// Pushes `n` plain tasks (`task-0`, `task-1`, ...); returns their ids.
pub async fn push_n(q: &dyn BaseQueue, n: usize) -> Vec<TaskId> {
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

/// Leases the task with `payload`, the first pushed: one lease call on an
/// ordered queue; on a sharded one (order kept per shard) the tasks other
/// shards hand out first are released again.
pub async fn lease_only(f: &Fixture, payload: &[u8]) -> Vec<Task> {
    let q = &*f.queue;
    if !f.sharded {
        let got = q.lease(1, TTL).await.unwrap();
        assert_eq!(got[0].payload, payload, "the first push wins");
        return got;
    }
    let (got, others): (Vec<_>, Vec<_>) = q
        .lease(1_000, TTL)
        .await
        .unwrap()
        .into_iter()
        .partition(|t| t.payload == payload);
    q.release(&leases(&others)).await.unwrap();
    assert_eq!(got.len(), 1, "the first push wins");
    got
}

/// The leases of these tasks.
pub fn leases(tasks: &[Task]) -> Vec<Lease> {
    tasks.iter().map(Task::lease).collect()
}

/// Tasks come out in push order, each leased once, at attempt 1.
pub async fn fifo_order(f: Fixture) {
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

/// An ack removes the task; acking again is refused.
pub async fn ack_removes(f: Fixture) {
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

/// A unique key collapses pushes while its task is pending, delayed or leased.
pub async fn unique_keys(f: Fixture) {
    let q = &*f.queue;
    let a = q.push(NewTask::new("a").unique("k")).await.unwrap();
    let Pushed::Created(id) = a else {
        panic!("first push creates: {a:?}")
    };
    let b = q.push(NewTask::new("b").unique("k")).await.unwrap();
    assert_eq!(b, Pushed::Duplicate(id), "pending key collapses");
    let other = q.push(NewTask::new("c").unique("other")).await.unwrap();
    assert!(matches!(other, Pushed::Created(_)));
    let got = lease_only(&f, b"a").await;
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

/// An expired lease hands the task out again and refuses its old holder.
pub async fn lease_expiry(f: Fixture) {
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

/// Advances the clock by `early`, when nothing may be leased yet (`why`),
/// then by `rest`; answers the one task a lease gets then.
async fn leased_only_after(f: &Fixture, early: Duration, rest: Duration, why: &str) -> Vec<Task> {
    f.clock.advance(early);
    assert!(f.queue.lease(1, TTL).await.unwrap().is_empty(), "{why}");
    f.clock.advance(rest);
    let again = f.queue.lease(1, TTL).await.unwrap();
    assert_eq!(again.len(), 1);
    again
}

/// Renewing extends a held lease; a lost lease cannot be renewed.
pub async fn renew_extends(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 1).await;
    let got = q.lease(1, TTL).await.unwrap();
    f.clock.advance(Duration::from_secs(8));
    assert_eq!(q.renew(&leases(&got), TTL).await.unwrap(), 1);
    let secs = Duration::from_secs;
    leased_only_after(&f, secs(8), secs(3), "renewed lease holds").await;
    assert_eq!(
        q.renew(&leases(&got), TTL).await.unwrap(),
        0,
        "lost lease cannot renew"
    );
}

/// A retry hides the task until its time and counts the delivery.
pub async fn retry_delay(f: Fixture) {
    let q = &*f.queue;
    push_n(q, 1).await;
    let got = q.lease(1, TTL).await.unwrap();
    let at = f.clock.now_ms() + 5_000;
    assert_eq!(q.retry(got[0].lease(), at).await.unwrap().applied, 1);
    let s = q.stats().await.unwrap();
    assert_eq!((s.delayed, s.pending, s.leased), (1, 0, 0));
    let ms = Duration::from_millis;
    let again = leased_only_after(&f, ms(4_999), ms(1), "not before its time").await;
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].attempt, 2);
}

/// A delayed push becomes visible after its delay.
pub async fn delayed_push(f: Fixture) {
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

/// A dead letter leaves the queue, is listed with its reason, and frees its key.
pub async fn dead_letter(f: Fixture) {
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

/// Pushes `n` tasks, leases three and releases them; answers the pushed
/// ids and what a lease of `n` gets next.
async fn release_three_of(q: &dyn BaseQueue, n: usize) -> (Vec<TaskId>, Vec<Task>) {
    let ids = push_n(q, n).await;
    let got = q.lease(3, TTL).await.unwrap();
    assert_eq!(q.release(&leases(&got)).await.unwrap().applied, 3);
    let again = q.lease(n, TTL).await.unwrap();
    (ids, again)
}

/// Released tasks are visible at once and the delivery is not counted.
pub async fn release_returns(f: Fixture) {
    let (ids, again) = release_three_of(&*f.queue, 3).await;
    let mut got_ids: Vec<_> = again.iter().map(|t| t.id).collect();
    got_ids.sort();
    assert_eq!(got_ids, ids, "released tasks are visible at once");
    assert!(
        again.iter().all(|t| t.attempt == 1),
        "a release does not count"
    );
}

/// Released tasks go back to the head of the line in their order, ahead
/// of tasks never leased (issue 14 item 15).
pub async fn release_keeps_order(f: Fixture) {
    let (ids, again) = release_three_of(&*f.queue, 5).await;
    let got_ids: Vec<_> = again.iter().map(|t| t.id).collect();
    assert_eq!(got_ids, ids, "released tasks keep their order");
}

/// Only the newest [`DEAD_CAPACITY`] dead letters are kept (issue 14 item 14).
pub async fn dead_letters_are_trimmed(f: Fixture) {
    let q = &*f.queue;
    let n = DEAD_CAPACITY + 2;
    let ids = push_n(q, n).await;
    let got = q.lease(n, TTL).await.unwrap();
    for t in &got {
        f.clock.advance(Duration::from_millis(1));
        let done = q.dead_letter(t.lease(), "no").await.unwrap();
        assert_eq!(done.applied, 1);
    }
    assert_eq!(q.stats().await.unwrap().dead, DEAD_CAPACITY as u64);
    let dead: Vec<_> = q
        .dead_letters(n)
        .await
        .unwrap()
        .iter()
        .map(|d| d.task.id)
        .collect();
    let newest: Vec<_> = ids.iter().rev().take(DEAD_CAPACITY).copied().collect();
    assert_eq!(dead, newest, "the newest dead letters, newest first");
}

/// A full queue refuses pushes after the push timeout (needs a capacity of 3).
pub async fn full_queue(f: Fixture) {
    if f.sharded {
        // Each shard has its own share of the capacity; checked by the
        // sharded backend's own tests.
        return;
    }
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

/// Concurrent lease calls never hand out one task twice.
pub async fn concurrent_leases_are_disjoint(f: Fixture) {
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

/// Instantiates every conformance check as a `#[tokio::test]` in a module
/// `$name`, each on a fixture from `$make(capacity).await`, where `capacity`
/// is `None` or the bound a check needs. `$make` is resolved inside the
/// generated module, which glob-imports its parent.
#[macro_export]
macro_rules! backend_suite {
    ($name:ident, $make:path) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::queue::conformance as c;

            $crate::conformance_tests! {
                $make;
                fifo_order => c::fifo_order,
                ack_removes => c::ack_removes,
                unique_keys => c::unique_keys,
                lease_expiry => c::lease_expiry,
                renew_extends => c::renew_extends,
                retry_delay => c::retry_delay,
                delayed_push => c::delayed_push,
                dead_letter => c::dead_letter,
                release_returns => c::release_returns,
                release_keeps_order => c::release_keeps_order,
                dead_letters_are_trimmed => c::dead_letters_are_trimmed,
                full_queue(Some(3)) => c::full_queue,
                admin_peek_states => c::admin::peek_states,
                admin_peek_pages => c::admin::peek_pages,
                admin_peek_dead => c::admin::peek_dead,
                admin_retry_dead => c::admin::retry_dead,
                admin_retry_dead_respects_unique_keys => c::admin::retry_dead_respects_unique_keys,
                admin_purge_dead => c::admin::purge_dead,
                admin_cancel => c::admin::cancel,
                admin_run_now => c::admin::run_now,
                admin_pause_flag => c::admin::pause_flag,
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_leases_are_disjoint() {
                c::concurrent_leases_are_disjoint($make(None).await).await
            }
        }
    };
}

/// One `#[tokio::test]` per `test => check` row of [`backend_suite!`](crate::backend_suite), on
/// `$make(capacity)`: `None` unless the row names a capacity.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_tests {
    ($make:path; $($test:ident $(($cap:expr))? => $check:path),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $check($make($crate::conformance_tests!(@capacity $($cap)?)).await).await
            }
        )*
    };
    (@capacity) => { None };
    (@capacity $cap:expr) => { $cap };
}

#[cfg(test)]
mod backends;

//! The operator actions ([`QueueAdmin`]) every backend must show alike:
//! peek by state with paging, dead-letter retry and purge, cancel, run
//! now, pause. Run by [`backend_suite!`](crate::backend_suite) like the rest.

use std::time::Duration;

use super::{DEAD_CAPACITY, Fixture, T0, TTL, leases, push_n};
use crate::queue::admin::{AdminError, QueueAdmin, TaskState, Which};
use crate::queue::{BaseQueue, NewTask, Pushed, Task, TaskId};

fn admin(q: &dyn BaseQueue) -> &dyn QueueAdmin {
    q.admin().expect("every backend has operator actions")
}

async fn ids_in(a: &dyn QueueAdmin, state: TaskState) -> Vec<TaskId> {
    let got = a.peek(state, None, 100).await.expect("peek");
    got.iter().map(|t| t.id).collect()
}

/// Dead-letters `n` fresh tasks (reason `why-<i>`), 1 ms apart; returns their ids.
async fn kill(f: &Fixture, n: usize) -> Vec<TaskId> {
    let q = &*f.queue;
    let ids = push_n(q, n).await;
    let got = q.lease(n, TTL).await.expect("lease");
    for (i, t) in got.iter().enumerate() {
        f.clock.advance(Duration::from_millis(1));
        let done = q.dead_letter(t.lease(), &format!("why-{i}")).await;
        assert_eq!(done.expect("dead-letter").applied, 1);
    }
    ids
}

/// Pushes three tasks, then one keyed `k` and delayed a minute, then
/// leases the first: returns the three ids, the delayed id and the leased
/// task, one task in each live state.
async fn one_in_each_state(q: &dyn BaseQueue) -> (Vec<TaskId>, TaskId, Vec<Task>) {
    let ids = push_n(q, 3).await;
    let delayed = q
        .push(
            NewTask::new("later")
                .unique("k")
                .delayed(Duration::from_secs(60)),
        )
        .await
        .expect("push")
        .id();
    let held = q.lease(1, TTL).await.expect("lease");
    (ids, delayed, held)
}

/// Each state lists its tasks by id with their fields; peeking takes nothing.
pub async fn peek_states(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let (ids, later, held) = one_in_each_state(q).await;
    assert_eq!(held[0].id, ids[0]);

    let pending = a.peek(TaskState::Pending, None, 10).await.unwrap();
    assert_eq!(pending.iter().map(|t| t.id).collect::<Vec<_>>(), ids[1..]);
    assert_eq!(pending[0].payload, b"task-1");
    assert_eq!((pending[0].attempt, pending[0].enqueued_at_ms), (0, T0));
    assert!(pending.iter().all(|t| t.dead.is_none()));

    let delayed = a.peek(TaskState::Delayed, None, 10).await.unwrap();
    assert_eq!(delayed.len(), 1);
    assert_eq!(delayed[0].id, later);
    assert_eq!(delayed[0].unique_key.as_deref(), Some("k"));
    assert_eq!(delayed[0].at_ms, Some(T0 + 60_000), "visible at");

    let leased = a.peek(TaskState::Leased, None, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id, leased[0].attempt), (ids[0], 1));
    assert_eq!(
        leased[0].at_ms,
        Some(T0 + TTL.as_millis() as u64),
        "lease expiry"
    );
    assert!(ids_in(a, TaskState::Dead).await.is_empty());

    // Nothing was taken or changed.
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.delayed, s.leased), (2, 1, 1));
    let next = q.lease(10, TTL).await.unwrap();
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), ids[1..]);

    // An expired lease is pending again, its delivery counted.
    f.clock.advance(TTL + Duration::from_millis(1));
    let pending = a.peek(TaskState::Pending, None, 10).await.unwrap();
    assert_eq!(pending.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert!(pending.iter().all(|t| t.attempt == 1));
}

/// `limit` and the `after` cursor page through a state in id order.
pub async fn peek_pages(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let ids = push_n(q, 5).await;
    let page = |after, limit| async move {
        let got = a.peek(TaskState::Pending, after, limit).await.unwrap();
        got.iter().map(|t| t.id).collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2).await, ids[..2]);
    assert_eq!(page(Some(ids[1]), 2).await, ids[2..4]);
    assert_eq!(page(Some(ids[3]), 2).await, ids[4..]);
    assert!(page(Some(ids[4]), 2).await.is_empty());
    assert!(page(None, 0).await.is_empty());
}

/// Dead letters page by id with their reason, failure time and delivery.
pub async fn peek_dead(f: Fixture) {
    let a = admin(&*f.queue);
    let ids = kill(&f, DEAD_CAPACITY).await;
    let first = a.peek(TaskState::Dead, None, 2).await.unwrap();
    assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), ids[..2]);
    let d = first[0].dead.as_ref().expect("dead info");
    assert_eq!((d.reason.as_str(), d.failed_at_ms), ("why-0", T0 + 1));
    assert_eq!((first[0].attempt, first[0].at_ms), (1, None));
    assert_eq!(first[1].payload, b"task-1");
    let rest = a.peek(TaskState::Dead, Some(ids[1]), 2).await.unwrap();
    assert_eq!(rest.iter().map(|t| t.id).collect::<Vec<_>>(), ids[2..]);
}

/// Retry moves dead letters back to pending with the delivery count reset.
pub async fn retry_dead(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let ids = kill(&f, DEAD_CAPACITY).await;
    let n = a
        .retry_dead(Which::Ids(vec![ids[1], 999_999]))
        .await
        .unwrap();
    assert_eq!(n, 1, "only the dead id counts");
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.dead), (1, 2));
    let back = a.peek(TaskState::Pending, None, 10).await.unwrap();
    assert_eq!((back[0].id, back[0].attempt), (ids[1], 0));
    let got = q.lease(10, TTL).await.unwrap();
    assert_eq!(
        (got[0].id, got[0].attempt, &got[0].payload[..]),
        (ids[1], 1, &b"task-1"[..])
    );
    assert_eq!(a.retry_dead(Which::All).await.unwrap(), 2);
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.leased, s.dead), (2, 1, 0));
    assert_eq!(a.retry_dead(Which::All).await.unwrap(), 0);
}

/// A dead letter keeps its unique key when retried, and stays dead while a
/// live task holds the key.
pub async fn retry_dead_respects_unique_keys(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    q.push(NewTask::new("one").unique("u")).await.unwrap();
    let got = q.lease(1, TTL).await.unwrap();
    q.dead_letter(got[0].lease(), "no").await.unwrap();
    let live = q.push(NewTask::new("two").unique("u")).await.unwrap();
    assert!(matches!(live, Pushed::Created(_)));
    assert_eq!(a.retry_dead(Which::All).await.unwrap(), 0, "key is taken");
    assert_eq!(q.stats().await.unwrap().dead, 1);
    a.cancel(live.id()).await.unwrap();
    assert_eq!(a.retry_dead(Which::All).await.unwrap(), 1);
    let again = q.push(NewTask::new("three").unique("u")).await.unwrap();
    assert_eq!(
        again,
        Pushed::Duplicate(got[0].id),
        "the retried task holds its key"
    );
}

/// Purge deletes dead letters by id or all, and counts them.
pub async fn purge_dead(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let ids = kill(&f, DEAD_CAPACITY).await;
    assert_eq!(
        a.purge_dead(Which::Ids(vec![ids[0], ids[0]]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(ids_in(a, TaskState::Dead).await, ids[1..]);
    assert_eq!(a.purge_dead(Which::All).await.unwrap(), 2);
    assert_eq!(q.stats().await.unwrap().dead, 0);
    assert_eq!(a.purge_dead(Which::All).await.unwrap(), 0);
}

/// Cancel deletes a pending or delayed task and frees its key; a leased
/// task is refused as leased, an unknown id as not found.
pub async fn cancel(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let (ids, delayed, held) = one_in_each_state(q).await;
    a.cancel(ids[1]).await.unwrap();
    a.cancel(delayed).await.unwrap();
    let again = q.push(NewTask::new("d").unique("k")).await.unwrap();
    assert!(matches!(again, Pushed::Created(_)), "cancel frees the key");
    match a.cancel(held[0].id).await {
        Err(e @ AdminError::Leased { .. }) => assert!(e.to_string().contains("leased")),
        other => panic!("a leased task is refused: {other:?}"),
    }
    assert!(matches!(
        a.cancel(999_999).await,
        Err(AdminError::NotFound { .. })
    ));
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.delayed, s.leased), (2, 0, 1));
    assert_eq!(q.ack(&leases(&held)).await.unwrap().applied, 1);
    let mut rest: Vec<_> = q
        .lease(10, TTL)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let mut want = vec![ids[2], again.id()];
    if f.sharded {
        // Order holds within a shard only.
        rest.sort();
        want.sort();
    }
    assert_eq!(rest, want);
}

/// Run-now makes a delayed task visible at once.
pub async fn run_now(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    let id = q
        .push(NewTask::new("later").delayed(Duration::from_secs(3600)))
        .await
        .unwrap()
        .id();
    assert!(q.lease(1, TTL).await.unwrap().is_empty());
    a.run_now(id).await.unwrap();
    let got = q.lease(1, TTL).await.unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [id]);
    assert!(matches!(
        a.run_now(id).await,
        Err(AdminError::Leased { .. })
    ));
    assert!(matches!(
        a.run_now(999_999).await,
        Err(AdminError::NotFound { .. })
    ));
}

/// Pause and resume set the flag `is_paused` reads; pushes still work.
pub async fn pause_flag(f: Fixture) {
    let q = &*f.queue;
    let a = admin(q);
    assert!(!a.is_paused().await.unwrap());
    a.set_paused(true).await.unwrap();
    a.set_paused(true).await.unwrap();
    assert!(a.is_paused().await.unwrap());
    push_n(q, 1).await;
    a.set_paused(false).await.unwrap();
    assert!(!a.is_paused().await.unwrap());
    assert_eq!(q.stats().await.unwrap().pending, 1);
}

//! Rows that hold runs of tasks (migration 5): a lease that takes part of
//! a row, a settlement that sends a row's tasks several ways, a stale
//! holder of a split row, operator actions inside a row, keyed tasks
//! sharing a row, and tasks of the one-task-per-row schema.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{client, server};
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::queue::{Action, NewTask, QueueStats, Settle, Task, TaskId};

const T0: u64 = 1_700_000_000_000;

fn store(url: &str, clock: Arc<dyn Clock>) -> PostgresStore {
    PostgresStore::open(url, PostgresOptions::default(), clock).unwrap()
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

async fn rows(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM taskhost.tasks", &[])
        .await
        .unwrap()
        .get(0)
}

/// Leases smaller than a row take its front, in push order, each task
/// once; the rest of the row stays one row.
#[tokio::test]
async fn a_lease_smaller_than_a_row_takes_its_front() {
    let server = server().await;
    let s = store(&server.url(), ManualClock::new(T0));
    let q = s.queue("jobs").unwrap();
    let pushed = crate::queue::conformance::push_n(q.as_ref(), 10).await;
    let c = client(&server.url()).await;
    assert_eq!(rows(&c).await, 1, "ten tasks pushed together share a row");
    let ttl = Duration::from_secs(60);
    let a = q.lease(3, ttl).await.unwrap();
    let b = q.lease(3, ttl).await.unwrap();
    let rest = q.lease(10, ttl).await.unwrap();
    assert_eq!(ids(&a), pushed[..3]);
    assert_eq!(ids(&b), pushed[3..6]);
    assert_eq!(ids(&rest), pushed[6..]);
    assert!(a.iter().chain(&b).chain(&rest).all(|t| t.attempt == 1));
    assert_eq!(rows(&c).await, 3, "two pieces and the rest of the row");
    for got in [&a, &b, &rest] {
        let leases: Vec<_> = got.iter().map(Task::lease).collect();
        assert_eq!(q.ack(&leases).await.unwrap().applied, got.len());
    }
    assert_eq!(rows(&c).await, 0);
    assert_eq!(q.stats().await.unwrap(), QueueStats::default());
    s.close().await;
}

/// One settlement sends the tasks of one row every way at once; the task
/// it does not name stays leased in the row.
#[tokio::test]
async fn one_settlement_sends_a_rows_tasks_every_way() {
    let server = server().await;
    let clock = ManualClock::new(T0);
    let s = store(&server.url(), clock.clone());
    let q = s.queue("jobs").unwrap();
    crate::queue::conformance::push_n(q.as_ref(), 10).await;
    let got = q.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got.len(), 10);
    let l: Vec<_> = got.iter().map(Task::lease).collect();
    let later = T0 + 60_000;
    let mut settle = Vec::new();
    for (i, lease) in l.iter().take(9).enumerate() {
        let action = match i {
            0..=3 => Action::Ack,
            4 | 5 => Action::RetryAt(later),
            6 | 7 => Action::Release,
            _ => Action::DeadLetter("broken".into()),
        };
        settle.push(Settle {
            lease: *lease,
            action,
        });
    }
    let done = q.settle(settle).await.unwrap();
    assert_eq!((done.applied, done.lost), (9, 0));
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.delayed, stats.leased, stats.dead),
        (2, 2, 1, 1),
        "released, retried, still held, dead"
    );
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].task.id, got[8].id);
    assert_eq!(dead[0].task.payload, got[8].payload);
    assert_eq!(dead[0].reason, "broken");
    let back = q.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&back), ids(&got[6..8]), "the released tasks, at once");
    assert!(
        back.iter().all(|t| t.attempt == 1),
        "a release is no delivery"
    );
    assert_eq!(back[0].payload, got[6].payload);
    let back: Vec<_> = back.iter().map(Task::lease).collect();
    assert_eq!(q.ack(&back).await.unwrap().applied, 2);
    clock.advance(Duration::from_secs(61));
    let retried = q.lease(10, Duration::from_secs(600)).await.unwrap();
    let mut want = ids(&got[4..6]);
    want.push(got[9].id); // its lease expired meanwhile
    assert_eq!(ids(&retried), want);
    assert_eq!(retried[0].attempt, 2);
    let stale = q.ack(&[l[9]]).await.unwrap();
    assert_eq!(
        (stale.applied, stale.lost),
        (0, 1),
        "its lease was taken over"
    );
    s.close().await;
}

/// A holder whose lease on a row expired, and whose row a later lease
/// took part of, cannot settle the part left behind.
#[tokio::test]
async fn a_stale_holder_cannot_settle_the_rest_of_a_split_row() {
    let server = server().await;
    let clock = ManualClock::new(T0);
    let s = store(&server.url(), clock.clone());
    let q = s.queue("jobs").unwrap();
    let pushed = crate::queue::conformance::push_n(q.as_ref(), 10).await;
    let first = q.lease(10, Duration::from_secs(10)).await.unwrap();
    clock.advance(Duration::from_secs(11));
    let other = s.queue("jobs").unwrap();
    let front = other.lease(4, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&front), pushed[..4]);
    let l: Vec<_> = first.iter().map(Task::lease).collect();
    assert_eq!(q.ack(&l).await.unwrap().applied, 0, "the stale holder");
    let rest = other.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&rest), pushed[4..], "the rest is still there");
    s.close().await;
}

/// Tasks written by a host of schema version 4 (a row per task), leased
/// and free, are served by this version after its migration.
#[tokio::test]
async fn tasks_of_schema_4_survive_the_migration() {
    let server = server().await;
    let c = client(&server.url()).await;
    c.batch_execute("CREATE SCHEMA taskhost").await.unwrap();
    c.batch_execute(
        "CREATE TABLE taskhost.schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .unwrap();
    for &(version, name, sql) in &migrate::MIGRATIONS[..4] {
        c.batch_execute(&fill(sql, "taskhost")).await.unwrap();
        c.execute(
            "INSERT INTO taskhost.schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .unwrap();
    }
    // Two free tasks, one keyed, and one held under an expired lease.
    c.batch_execute(&format!(
        "INSERT INTO taskhost.tasks (queue, payload, unique_key, attempt, enqueued_at, visible_at, nonce, holder)
         VALUES ('jobs', 'a', NULL, 0, {T0}, {T0}, NULL, NULL),
                ('jobs', 'b', 'k', 0, {T0}, {T0}, NULL, NULL),
                ('jobs', 'c', NULL, 1, {T0}, {T0}, 42, 'gone');
         INSERT INTO taskhost.dead (id, queue, payload, attempt, enqueued_at, reason, failed_at)
         VALUES (7, 'jobs', 'd', 3, {T0}, 'old', {T0});",
    ))
    .await
    .unwrap();
    let s = store(&server.url(), ManualClock::new(T0 + 1));
    let q = s.queue("jobs").unwrap();
    let got = q.lease(10, Duration::from_secs(60)).await.unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|t| t.payload.as_slice()).collect();
    assert_eq!(payloads, [b"a", b"b", b"c"]);
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(got[1].unique_key.as_deref(), Some("k"));
    assert_eq!(got[2].attempt, 2);
    let dup = q.push(NewTask::new("again").unique("k")).await.unwrap();
    assert_eq!(
        dup,
        crate::queue::Pushed::Duplicate(2),
        "the key is still held"
    );
    let new = q.push(NewTask::new("new")).await.unwrap();
    assert!(
        new.id() > 7,
        "new ids follow the old tasks and dead letters"
    );
    s.close().await;
}

/// Operator actions on a task that shares its row: peek pages through
/// the row's tasks, cancel cuts the task out, run-now moves it to a row
/// of its own; the other tasks stay as they were.
#[tokio::test]
async fn operator_actions_reach_a_task_inside_a_row() {
    use crate::queue::admin::TaskState;
    let server = server().await;
    let clock = ManualClock::new(T0);
    let s = store(&server.url(), clock.clone());
    let q = s.queue("jobs").unwrap();
    let later = |i: usize| NewTask::new(format!("t{i}")).delayed(Duration::from_secs(60));
    let pushed: Vec<TaskId> = q
        .push_batch((0..5).map(later).collect())
        .await
        .unwrap()
        .into_iter()
        .map(crate::queue::Pushed::id)
        .collect();
    let c = client(&server.url()).await;
    assert_eq!(rows(&c).await, 1);
    let admin = q.admin().unwrap();
    let page = admin
        .peek(TaskState::Delayed, Some(pushed[0]), 2)
        .await
        .unwrap();
    let got: Vec<_> = page.iter().map(|t| (t.id, t.payload.clone())).collect();
    assert_eq!(
        got,
        [(pushed[1], b"t1".to_vec()), (pushed[2], b"t2".to_vec())]
    );
    admin.cancel(pushed[2]).await.unwrap();
    admin.run_now(pushed[3]).await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.delayed), (1, 3));
    let now = q.lease(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ids(&now), [pushed[3]]);
    assert_eq!(now[0].payload, b"t3");
    assert_eq!(q.ack(&[now[0].lease()]).await.unwrap().applied, 1);
    clock.advance(Duration::from_secs(61));
    let rest = q.lease(10, Duration::from_secs(60)).await.unwrap();
    let payloads: Vec<&[u8]> = rest.iter().map(|t| t.payload.as_slice()).collect();
    assert_eq!(payloads, [b"t0", b"t1", b"t4"]);
    s.close().await;
}

/// Keyed tasks pushed together share a row; each key stays taken while
/// its task lives (pending, leased or waiting for a retry) and is free
/// again once the task is acked or dead.
#[tokio::test]
async fn keyed_tasks_share_rows_and_free_their_keys_when_they_end() {
    use crate::queue::Pushed;
    use crate::queue::admin::Which;
    let server = server().await;
    let clock = ManualClock::new(T0);
    let s = store(&server.url(), clock.clone());
    let q = s.queue("jobs").unwrap();
    let tasks = (0..10)
        .map(|i| NewTask::new(format!("t{i}")).unique(format!("k{i}")))
        .chain([NewTask::new("dup").unique("k3")])
        .collect();
    let pushed = q.push_batch(tasks).await.unwrap();
    assert_eq!(pushed[10], Pushed::Duplicate(pushed[3].id()));
    let c = client(&server.url()).await;
    assert_eq!(
        rows(&c).await,
        1,
        "ten keyed tasks pushed together share a row"
    );
    let got = q.lease(10, Duration::from_secs(60)).await.unwrap();
    let keys: Vec<_> = got.iter().map(|t| t.unique_key.clone().unwrap()).collect();
    assert_eq!(keys, (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>());
    let again = q.push(NewTask::new("x").unique("k0")).await.unwrap();
    assert_eq!(again, Pushed::Duplicate(got[0].id), "held while leased");
    let mut settle: Vec<Settle> = got[..5]
        .iter()
        .map(|t| Settle {
            lease: t.lease(),
            action: Action::Ack,
        })
        .collect();
    settle.push(Settle {
        lease: got[5].lease(),
        action: Action::DeadLetter("broken".into()),
    });
    settle.push(Settle {
        lease: got[6].lease(),
        action: Action::RetryAt(T0 + 60_000),
    });
    assert_eq!(q.settle(settle).await.unwrap().applied, 7);
    for (i, t) in got.iter().enumerate() {
        let p = q
            .push(NewTask::new("again").unique(format!("k{i}")))
            .await
            .unwrap();
        if i <= 5 {
            assert!(matches!(p, Pushed::Created(_)), "k{i} is free: {p:?}");
        } else {
            assert_eq!(p, Pushed::Duplicate(t.id), "k{i} is still taken");
        }
    }
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].task.unique_key.as_deref(), Some("k5"));
    let admin = q.admin().unwrap();
    assert_eq!(
        admin.retry_dead(Which::All).await.unwrap(),
        0,
        "k5 is taken by the new push: its dead letter stays dead"
    );
    let later = |k: &str| {
        NewTask::new(k.to_owned())
            .unique(k)
            .delayed(Duration::from_secs(60))
    };
    let cancelled = q.push_batch(vec![later("c0"), later("c1")]).await.unwrap();
    admin.cancel(cancelled[1].id()).await.unwrap();
    let p = q.push(later("c1")).await.unwrap();
    assert!(
        matches!(p, Pushed::Created(_)),
        "a cancel frees the key: {p:?}"
    );
    assert_eq!(
        q.push(later("c0")).await.unwrap(),
        Pushed::Duplicate(cancelled[0].id()),
        "its row-mate keeps its own"
    );
    s.close().await;
}

//! Sharded queues on a private `redis-server` (sharding needs no cluster;
//! the cluster runs are in the conformance suite and `tests/all`).

use std::collections::HashSet;

use super::super::{RedisOptions, RedisStore, shard_prefix};
use crate::clock;
use crate::queue::QueueStore;
use crate::queue::admin::{AdminError, TaskState};
use crate::queue::{NewTask, Pushed, QueueError};
use taskhost_fixtures::redis::RedisServer;

fn store(server: &RedisServer, shards: &[(&str, usize)]) -> RedisStore {
    let opts = RedisOptions {
        shards: shards.iter().map(|&(q, n)| (q.to_owned(), n)).collect(),
        ..RedisOptions::default()
    };
    RedisStore::open(&server.url(), opts, clock::system()).unwrap()
}

fn llen(server: &RedisServer, key: &str) -> usize {
    let reply = server.command(&["LLEN", key]).unwrap();
    reply.trim().trim_start_matches(':').parse().unwrap()
}

/// Keyless batches go to the shards in turn, keyed tasks to their key's
/// shard; leases drain every shard; ids are unique and name their shard;
/// stats, peek and cancel see the queue as one.
#[tokio::test]
async fn a_sharded_queue_spreads_pushes_and_drains_every_shard() {
    let server = RedisServer::start().unwrap();
    let s = store(&server, &[("jobs", 3)]);
    s.ping().await.unwrap();
    let q = s.queue("jobs").unwrap();
    for b in 0..6 {
        let tasks = (0..10).map(|i| NewTask::new(format!("{b}-{i}"))).collect();
        q.push_batch(tasks).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            llen(&server, &format!("{}ready", shard_prefix("jobs", i, 3))),
            20,
            "shard {i}"
        );
    }
    // A unique key collapses whichever host pushes it.
    let a = q.push(NewTask::new("k").unique("key")).await.unwrap();
    let b = q.push(NewTask::new("k2").unique("key")).await.unwrap();
    let Pushed::Created(id) = a else {
        panic!("{a:?}")
    };
    assert_eq!(b, Pushed::Duplicate(id));
    assert_eq!(q.stats().await.unwrap().pending, 61);
    // Peek pages across shards in id order.
    let admin = q.admin().unwrap();
    let first = admin.peek(TaskState::Pending, None, 10).await.unwrap();
    let rest = admin
        .peek(TaskState::Pending, first.last().map(|t| t.id), 100)
        .await
        .unwrap();
    let ids: Vec<_> = first.iter().chain(&rest).map(|t| t.id).collect();
    assert_eq!(ids.len(), 61);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending: {ids:?}");
    // Cancel finds the task's shard by its id.
    admin.cancel(id).await.unwrap();
    match admin.cancel(id).await {
        Err(AdminError::NotFound { id: gone, .. }) => assert_eq!(gone, id),
        other => panic!("cancelled twice: {other:?}"),
    }
    let mut seen = HashSet::new();
    loop {
        let got = q
            .lease(7, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for t in &got {
            assert!(seen.insert(t.id), "task {} leased twice", t.id);
        }
        let leases: Vec<_> = got.iter().map(|t| t.lease()).collect();
        assert_eq!(q.ack(&leases).await.unwrap().applied, got.len());
    }
    assert_eq!(seen.len(), 60);
    let shards: HashSet<u64> = seen.iter().map(|id| id % 3).collect();
    assert_eq!(shards.len(), 3, "every shard drained");
    assert_eq!(q.stats().await.unwrap(), Default::default());
}

/// The shard count is fixed by the first user of a queue: a host
/// configured with another count is refused, naming both and the fix; a
/// client without the setting follows what Redis holds.
#[tokio::test]
async fn a_shard_count_that_disagrees_with_redis_is_refused() {
    let server = RedisServer::start().unwrap();
    store(&server, &[("jobs", 3)]).ping().await.unwrap();
    let err = store(&server, &[("jobs", 2)]).ping().await.unwrap_err();
    let QueueError::Config(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("3 shard") && msg.contains("= 2") && msg.contains("HDEL taskhost:shards jobs"),
        "{msg}"
    );
    // `host push` without the setting pushes into the 3 shards.
    let plain = store(&server, &[]);
    let q = plain.queue("jobs").unwrap();
    for _ in 0..3 {
        q.push(NewTask::new("x")).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            llen(&server, &format!("{}ready", shard_prefix("jobs", i, 3))),
            1
        );
    }
    assert_eq!(llen(&server, "taskhost:{jobs}:ready"), 0);
    // A queue first used unsharded stays so; names with `#` are refused.
    plain
        .queue("solo")
        .unwrap()
        .push(NewTask::new("y"))
        .await
        .unwrap();
    let err = store(&server, &[("solo", 2)]).ping().await.unwrap_err();
    assert!(matches!(err, QueueError::Config(_)), "{err:?}");
    assert!(plain.queue("a#1").is_err());
}

/// Capacity is split between the shards: each holds its share, and a
/// push beyond a shard's share fails naming the queue, after the timeout.
#[tokio::test]
async fn each_shard_holds_its_share_of_the_capacity() {
    let server = RedisServer::start().unwrap();
    let opts = RedisOptions {
        capacity: Some(6),
        push_timeout: std::time::Duration::from_millis(20),
        shards: [("jobs".to_owned(), 3)].into(),
        ..RedisOptions::default()
    };
    let s = RedisStore::open(&server.url(), opts, clock::system()).unwrap();
    let q = s.queue("jobs").unwrap();
    for _ in 0..3 {
        let two = (0..2).map(|i| NewTask::new(format!("{i}"))).collect();
        q.push_batch(two).await.unwrap();
    }
    let err = q.push(NewTask::new("over")).await.unwrap_err();
    assert!(
        matches!(err, QueueError::Full { capacity: 2, .. }) && err.to_string().contains("jobs"),
        "{err}"
    );
    assert_eq!(q.stats().await.unwrap().pending, 6);
}

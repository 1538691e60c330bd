//! The fixtures of this crate's backends, and the list of suites.

use std::sync::Arc;
use std::time::Duration;

use super::{DEAD_CAPACITY, Fixture, T0};
use crate::clock::ManualClock;
use crate::queue::QueueStore;
use crate::queue::disk::{DiskOptions, DiskStore};
use crate::queue::memory::{MemoryOptions, MemoryQueue};
use crate::queue::postgres::{PostgresOptions, PostgresStore};
use crate::queue::redis::{RedisOptions, RedisStore};
use taskhost_fixtures::postgres::PostgresServer;
use taskhost_fixtures::redis::RedisServer;
use taskhost_fixtures::redis_cluster::RedisCluster;
use tempfile::tempdir;

const PUSH_TIMEOUT: Duration = Duration::from_millis(50);

async fn memory(capacity: Option<usize>) -> Fixture {
    let clock = ManualClock::new(T0);
    let opts = MemoryOptions {
        capacity: capacity.unwrap_or(100_000),
        push_timeout: PUSH_TIMEOUT,
        dead_capacity: DEAD_CAPACITY,
    };
    let q = MemoryQueue::new("conformance", opts, clock.clone()).expect("valid options");
    Fixture::new(Arc::new(q), clock)
}

async fn disk(capacity: Option<usize>) -> Fixture {
    let clock = ManualClock::new(T0);
    let dir = tempdir().expect("temp dir");
    let opts = DiskOptions {
        capacity,
        push_timeout: PUSH_TIMEOUT,
        dead_capacity: DEAD_CAPACITY,
        ..DiskOptions::default()
    };
    let store = DiskStore::open(dir.path(), opts, clock.clone()).expect("open store");
    let queue = store.queue("conformance").expect("queue");
    Fixture::new(queue, clock).keeping((dir, store))
}

/// A queue on a private redis-server started for this test.
async fn redis(capacity: Option<usize>) -> Fixture {
    let server = RedisServer::start().expect("start redis-server");
    let clock = ManualClock::new(T0);
    let opts = RedisOptions {
        capacity,
        push_timeout: PUSH_TIMEOUT,
        dead_capacity: DEAD_CAPACITY,
        ..RedisOptions::default()
    };
    let store = RedisStore::open(&server.url(), opts, clock.clone()).expect("open store");
    let queue = store.queue("conformance").expect("queue");
    Fixture::new(queue, clock).keeping(server)
}

/// A queue of `shards` shards on a private 3-master Redis Cluster
/// started for this test, reached through the cluster client.
async fn redis_cluster(capacity: Option<usize>, shards: usize) -> Fixture {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .expect("join")
        .expect("start a Redis Cluster");
    let clock = ManualClock::new(T0);
    let opts = RedisOptions {
        capacity,
        push_timeout: PUSH_TIMEOUT,
        dead_capacity: DEAD_CAPACITY,
        shards: [("conformance".to_owned(), shards)].into(),
        ..RedisOptions::default()
    };
    let store = RedisStore::open(&cluster.url(), opts, clock.clone()).expect("open store");
    let queue = store.queue("conformance").expect("queue");
    Fixture::new(queue, clock).keeping((store, cluster))
}

async fn redis_cluster_1(capacity: Option<usize>) -> Fixture {
    redis_cluster(capacity, 1).await
}

async fn redis_cluster_3(capacity: Option<usize>) -> Fixture {
    redis_cluster(capacity, 3).await.sharded()
}

/// A queue on a private PostgreSQL server started for this test.
async fn postgres(capacity: Option<usize>) -> Fixture {
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("join")
        .expect("start postgres");
    let clock = ManualClock::new(T0);
    let opts = PostgresOptions {
        capacity,
        push_timeout: PUSH_TIMEOUT,
        dead_capacity: DEAD_CAPACITY,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(&server.url(), opts, clock.clone()).expect("open store");
    let queue = store.queue("conformance").expect("queue");
    Fixture::new(queue, clock).keeping((store, server))
}

crate::backend_suite!(memory, memory);
crate::backend_suite!(disk, disk);
crate::backend_suite!(redis, redis);
crate::backend_suite!(redis_cluster, redis_cluster_1);
crate::backend_suite!(redis_sharded, redis_cluster_3);
crate::backend_suite!(postgres, postgres);

//! The Redis host registry against a private `redis-server`.

use super::*;
use crate::clock;
use crate::queue::redis::{RedisOptions, RedisStore};
use crate::queue::{NewTask, QueueStore};
use taskhost_fixtures::redis::RedisServer;

fn me(id: &str) -> HostInfo {
    HostInfo {
        id: id.into(),
        machine: "test".into(),
        pid: 4242,
        ..HostInfo::default()
    }
}

const TTL: Duration = Duration::from_secs(3600);

/// A host whose heartbeat key expired (deleted here, as an expiry would)
/// is gone: every batch it held comes back at once, its id leaves the
/// registry, and it can neither renew nor settle what it held. Another
/// host's batch stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_heartbeat_expired_loses_its_leases_at_once() {
    let server = RedisServer::start().unwrap();
    let open =
        || RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let (a, b) = (open(), open());
    let (qa, qb) = (a.queue("jobs").unwrap(), b.queue("jobs").unwrap());
    let tasks: Vec<_> = (0..10).map(|i| NewTask::new(format!("t{i}"))).collect();
    qa.push_batch(tasks).await.unwrap();
    let (ra, rb) = (a.registry(), b.registry());
    ra.heartbeat(&me("host-a")).await.unwrap();
    rb.heartbeat(&me("host-b")).await.unwrap();
    let held_a = [
        qa.lease(3, TTL).await.unwrap(),
        qa.lease(3, TTL).await.unwrap(),
    ]
    .concat();
    let held_b = qb.lease(2, TTL).await.unwrap();
    assert_eq!(rb.hosts().await.unwrap().len(), 2);
    assert_eq!(rb.reclaim_gone().await.unwrap(), 0, "both alive");

    server.command(&["DEL", "taskhost:host:host-a"]).unwrap();
    assert_eq!(rb.reclaim_gone().await.unwrap(), 6);
    let hosts = rb.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].id, "host-b");
    let s = qb.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (8, 2), "{s:?}");
    let old: Vec<_> = held_a.iter().map(|t| t.lease()).collect();
    assert_eq!(qa.renew(&old, TTL).await.unwrap(), 0);
    assert_eq!(qa.ack(&old).await.unwrap().lost, 6);
    let again = qb.lease(100, TTL).await.unwrap();
    assert_eq!(again.len(), 8);
    assert_eq!(again.iter().filter(|t| t.attempt == 2).count(), 6);
    let mine: Vec<_> = held_b.iter().map(|t| t.lease()).collect();
    assert_eq!(qb.ack(&mine).await.unwrap().applied, 2);
    // Nothing is left in the gone host's set.
    let left = server
        .command(&["EXISTS", "taskhost:{jobs}:h:host-a"])
        .unwrap();
    assert!(left.contains('0'), "{left}");
    rb.deregister("host-b").await.unwrap();
    assert!(rb.hosts().await.unwrap().is_empty());
    a.close().await;
    b.close().await;
}

/// `request_reload` reaches a listening host and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_reaches_a_listening_host() {
    let server = RedisServer::start().unwrap();
    let store = RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let reg = store.registry();
    let (tx, mut rx) = mpsc::channel(1);
    let stop = CancellationToken::new();
    let listener = {
        let (reg, stop) = (reg.clone(), stop.clone());
        tokio::spawn(async move { reg.listen_for_reloads(tx, stop).await })
    };
    // Subscribing takes a moment: ask until one host heard.
    let mut asked = 0;
    for _ in 0..500 {
        asked = reg.request_reload().await.unwrap();
        if asked > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(asked, 1);
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    listener.await.unwrap();
    store.close().await;
}

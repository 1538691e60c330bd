//! The PostgreSQL host registry against a private PostgreSQL.

use super::*;
use crate::clock;
use crate::queue::postgres::{PostgresOptions, PostgresStore};
use crate::queue::{NewTask, QueueStore};
use taskhost_fixtures::postgres::PostgresServer;

fn me(id: &str) -> HostInfo {
    HostInfo {
        id: id.into(),
        machine: "test".into(),
        pid: 4242,
        ..HostInfo::default()
    }
}

const TTL: Duration = Duration::from_secs(3600);

async fn server() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .unwrap()
}

async fn sql(url: &str, statement: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client.batch_execute(statement).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// A host whose registration expired is gone: every lease it held comes
/// back at once, its row leaves the registry, and it can neither renew
/// nor settle what it held. Another host's leases stay put; leases taken
/// before registering (no holder) are never taken for a gone host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_registration_expired_loses_its_leases_at_once() {
    let server = server().await;
    let url = server.url();
    let open = || PostgresStore::open(&url, PostgresOptions::default(), clock::system()).unwrap();
    let (a, b, c) = (open(), open(), open());
    let (qa, qb, qc) = (
        a.queue("jobs").unwrap(),
        b.queue("jobs").unwrap(),
        c.queue("jobs").unwrap(),
    );
    let tasks: Vec<_> = (0..12).map(|i| NewTask::new(format!("t{i}"))).collect();
    qa.push_batch(tasks).await.unwrap();
    let unregistered = qc.lease(2, TTL).await.unwrap();
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

    sql(
        &url,
        "UPDATE taskhost.hosts SET expires_at = now() - interval '1 second' WHERE id = 'host-a'",
    )
    .await;
    assert_eq!(
        rb.hosts().await.unwrap().len(),
        1,
        "an expired row is not listed"
    );
    assert_eq!(rb.reclaim_gone().await.unwrap(), 6);
    assert_eq!(rb.reclaim_gone().await.unwrap(), 0, "once");
    let hosts = rb.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].id, "host-b");
    let s = qb.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (8, 4), "{s:?}");
    let old: Vec<_> = held_a.iter().map(|t| t.lease()).collect();
    assert_eq!(qa.renew(&old, TTL).await.unwrap(), 0);
    assert_eq!(qa.ack(&old).await.unwrap().lost, 6);
    let again = qb.lease(100, TTL).await.unwrap();
    assert_eq!(again.len(), 8);
    assert_eq!(again.iter().filter(|t| t.attempt == 2).count(), 6);
    let mine: Vec<_> = held_b.iter().map(|t| t.lease()).collect();
    assert_eq!(qb.ack(&mine).await.unwrap().applied, 2);
    let theirs: Vec<_> = unregistered.iter().map(|t| t.lease()).collect();
    assert_eq!(qc.ack(&theirs).await.unwrap().applied, 2);

    // A gone host registers again with its next heartbeat.
    ra.heartbeat(&me("host-a")).await.unwrap();
    assert_eq!(rb.hosts().await.unwrap().len(), 2);
    for s in [a, b, c] {
        s.close().await;
    }
}

/// A clean stop leaves the registry and gives back what the host still
/// held (a batch abandoned after the grace period) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_registry_and_gives_back_what_it_held() {
    let server = server().await;
    let store =
        PostgresStore::open(&server.url(), PostgresOptions::default(), clock::system()).unwrap();
    let q = store.queue("jobs").unwrap();
    q.push_batch(vec![NewTask::new("a"), NewTask::new("b")])
        .await
        .unwrap();
    let reg = store.registry();
    reg.heartbeat(&me("host-a")).await.unwrap();
    let held = q.lease(1, TTL).await.unwrap();
    assert_eq!(held.len(), 1);
    reg.deregister("host-a").await.unwrap();
    assert!(reg.hosts().await.unwrap().is_empty());
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (2, 0), "{s:?}");
    let leases: Vec<_> = held.iter().map(|t| t.lease()).collect();
    assert_eq!(q.ack(&leases).await.unwrap().lost, 1);
    store.close().await;
}

/// `request_reload` counts the live hosts it asked and reaches a host
/// that registered, even one not yet looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_reaches_a_registered_host() {
    let server = server().await;
    let store =
        PostgresStore::open(&server.url(), PostgresOptions::default(), clock::system()).unwrap();
    let reg = store.registry();
    assert_eq!(reg.request_reload().await.unwrap(), 0, "no host yet");
    reg.heartbeat(&me("host-a")).await.unwrap();
    assert_eq!(reg.request_reload().await.unwrap(), 1);
    let (tx, mut rx) = mpsc::channel(1);
    let stop = CancellationToken::new();
    let listener = {
        let (reg, stop) = (reg.clone(), stop.clone());
        tokio::spawn(async move { reg.listen_for_reloads(tx, stop).await })
    };
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    listener.await.unwrap();
    store.close().await;
}

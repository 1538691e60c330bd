//! The PostgreSQL host registry against a private PostgreSQL.

use super::*;
use crate::clock;
use crate::queue::conformance::leases;
use crate::queue::hosts_checks::me;
use crate::queue::postgres::{PostgresOptions, PostgresStore};
use crate::queue::{NewTask, QueueStore, hosts_checks};
use taskhost_fixtures::postgres::PostgresServer;

const TTL: Duration = Duration::from_secs(3600);

async fn server() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .unwrap()
}

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, PostgresOptions::default(), clock::system()).unwrap()
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

/// A host whose registration expired is gone: the shared registry check;
/// and leases taken before registering (no holder) are never taken for a
/// gone host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_registration_expired_loses_its_leases_at_once() {
    let server = server().await;
    let url = server.url();
    let (a, b) = (open(&url), open(&url));
    let expire = sql(
        &url,
        "UPDATE taskhost.hosts SET expires_at = now() - interval '1 second' WHERE id = 'host-a'",
    );
    hosts_checks::a_gone_host_loses_its_leases_at_once(&a, &b, expire).await;

    let unregistered = open(&url);
    let q = unregistered.queue("jobs").unwrap();
    q.push(NewTask::new("x")).await.unwrap();
    let held = q.lease(1, TTL).await.unwrap();
    assert_eq!(b.registry().reclaim_gone().await.unwrap(), 0);
    let s = q.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (0, 1), "{s:?}");
    assert_eq!(q.ack(&leases(&held)).await.unwrap().applied, 1);
    for s in [a, b, unregistered] {
        s.close().await;
    }
}

/// A clean stop leaves the registry and gives back what the host still
/// held (a batch abandoned after the grace period) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_registry_and_gives_back_what_it_held() {
    let server = server().await;
    let store = open(&server.url());
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
    assert_eq!(q.ack(&leases(&held)).await.unwrap().lost, 1);
    store.close().await;
}

/// `request_reload` counts the live hosts it asked and reaches a host
/// that registered, even one not yet looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_reaches_a_registered_host() {
    let server = server().await;
    let store = open(&server.url());
    let reg = store.registry();
    assert_eq!(reg.request_reload().await.unwrap(), 0, "no host yet");
    reg.heartbeat(&me("host-a")).await.unwrap();
    assert_eq!(reg.request_reload().await.unwrap(), 1);
    hosts_checks::a_reload_arrives(&reg, async {}).await;
    store.close().await;
}

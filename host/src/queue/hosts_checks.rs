//! Checks every shared-store registry (Redis, PostgreSQL) must pass, one
//! body each, run by the backends' registry tests against their servers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BaseQueue, HostInfo, HostRegistry, NewTask, QueueStore, Task};

/// A registration named `id`, on no data directory.
pub(crate) fn me(id: &str) -> HostInfo {
    HostInfo {
        id: id.into(),
        machine: "test".into(),
        pid: 4242,
        ..HostInfo::default()
    }
}

const TTL: Duration = Duration::from_secs(3600);

/// `held` were leased by a holder taken for gone: it can renew none of
/// them, and settling them finds every one lost.
pub(crate) async fn held_leases_are_lost(q: &dyn BaseQueue, held: &[Task]) {
    let old: Vec<_> = held.iter().map(|t| t.lease()).collect();
    assert_eq!(q.renew(&old, TTL).await.unwrap(), 0);
    assert_eq!(q.ack(&old).await.unwrap().lost, held.len());
}

/// Hosts `host-a` (on store `a`) and `host-b` (on `b`) register and lease
/// from queue `jobs`; `expire` ends host-a's registration as its backend's
/// expiry would. Then every lease host-a held comes back at once, its
/// registration is gone, and it can neither renew nor settle what it held;
/// host-b's leases stay put.
pub(crate) async fn a_gone_host_loses_its_leases_at_once(
    a: &dyn QueueStore,
    b: &dyn QueueStore,
    expire: impl Future<Output = ()>,
) {
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

    expire.await;
    assert_eq!(rb.reclaim_gone().await.unwrap(), 6);
    assert_eq!(rb.reclaim_gone().await.unwrap(), 0, "once");
    let hosts = rb.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].id, "host-b");
    let s = qb.stats().await.unwrap();
    assert_eq!((s.pending, s.leased), (8, 2), "{s:?}");
    held_leases_are_lost(&*qa, &held_a).await;
    let again = qb.lease(100, TTL).await.unwrap();
    assert_eq!(again.len(), 8);
    assert_eq!(again.iter().filter(|t| t.attempt == 2).count(), 6);
    let mine: Vec<_> = held_b.iter().map(|t| t.lease()).collect();
    assert_eq!(qb.ack(&mine).await.unwrap().applied, 2);
    let rest: Vec<_> = again.iter().map(|t| t.lease()).collect();
    assert_eq!(qb.ack(&rest).await.unwrap().applied, 8);

    // A host taken for gone registers again with its next heartbeat.
    ra.heartbeat(&me("host-a")).await.unwrap();
    assert_eq!(rb.hosts().await.unwrap().len(), 2);
    rb.deregister("host-b").await.unwrap();
    ra.deregister("host-a").await.unwrap();
    assert!(rb.hosts().await.unwrap().is_empty());
}

/// While `reg` listens for reload requests, `ask` runs; then a reload must
/// arrive within a minute. Stops the listener.
pub(crate) async fn a_reload_arrives(reg: &Arc<dyn HostRegistry>, ask: impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel(1);
    let stop = CancellationToken::new();
    let listener = {
        let (reg, stop) = (reg.clone(), stop.clone());
        tokio::spawn(async move { reg.listen_for_reloads(tx, stop).await })
    };
    ask.await;
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a reload within a minute")
        .expect("the listener runs");
    stop.cancel();
    listener.await.unwrap();
}

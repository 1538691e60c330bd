//! Disk-specific behaviour; the shared checks are in `conformance.rs`.

use std::collections::HashSet;

use super::*;
use crate::clock::ManualClock;
use crate::queue::conformance::{T0, TTL, push_n};
// A test-only fixture; its path changes when it moves to a dev crate.
use tempfile::tempdir;

/// The disk backend keeps everything across a close and reopen, leases included.
#[tokio::test]
async fn disk_persists_across_reopen() {
    let clock = ManualClock::new(T0);
    let dir = tempdir().unwrap();
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
    let dir = tempdir().unwrap();
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

/// The data directory it makes is the user's alone, and so is the database.
#[cfg(unix)]
#[tokio::test]
async fn a_new_data_dir_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let store = DiskStore::open(&data, DiskOptions::default(), ManualClock::new(T0)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    store.close().await;
}

//! Disk-specific behaviour; the shared checks are in `conformance.rs`.

use std::collections::HashSet;

use super::*;
use crate::clock::ManualClock;
use crate::queue::conformance::{T0, TTL, push_n};
// A test-only fixture; its path changes when it moves to a dev crate.
use tempfile::{TempDir, tempdir};

/// Opens the store in `dir` with the default options on `clock`.
fn open(dir: &Path, clock: &Arc<ManualClock>) -> Result<Arc<DiskStore>, QueueError> {
    DiskStore::open(dir, DiskOptions::default(), clock.clone())
}

/// Why opening the store in `dir` is refused.
fn refusal(dir: &Path, clock: &Arc<ManualClock>) -> String {
    open(dir, clock).unwrap_err().to_string()
}

/// A store in a new directory, on a clock at [`T0`].
fn new_store() -> (TempDir, Arc<ManualClock>, Arc<DiskStore>) {
    let clock = ManualClock::new(T0);
    let dir = tempdir().unwrap();
    let store = open(dir.path(), &clock).unwrap();
    (dir, clock, store)
}

/// A closed store in a new directory holding `n` tasks in queue `q`, and
/// the clock it was written with.
async fn closed_store_with(n: usize) -> (TempDir, Arc<ManualClock>) {
    let (dir, clock, store) = new_store();
    push_n(&*store.queue("q").unwrap(), n).await;
    store.close().await;
    (dir, clock)
}

/// The disk backend keeps everything across a close and reopen, leases included.
#[tokio::test]
async fn disk_persists_across_reopen() {
    let (dir, clock, store) = new_store();
    let q = store.queue("persist").unwrap();
    let ids = push_n(&*q, 10).await;
    q.push(NewTask::new("keyed").unique("key")).await.unwrap();
    let held = q.lease(3, TTL).await.unwrap();
    let dead = q.lease(1, TTL).await.unwrap();
    q.dead_letter(dead[0].lease(), "gone").await.unwrap();
    store.close().await;
    drop((q, store));

    let store = open(dir.path(), &clock).unwrap();
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
    let a = open(dir.path(), &clock).unwrap();
    let b = open(dir.path(), &clock).unwrap();
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
    let store = open(&data, &ManualClock::new(T0)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    store.close().await;
}

/// A database truncated to nothing or deleted is refused, naming the file,
/// instead of being served as a new empty queue; moving it aside starts over.
#[tokio::test]
async fn a_vanished_database_is_refused_until_moved_aside() {
    let (dir, clock) = closed_store_with(5).await;
    let db = dir.path().join(DB_FILE);
    std::fs::File::create(&db).unwrap(); // truncates to 0 bytes
    let e = refusal(dir.path(), &clock);
    assert!(
        e.contains(&db.display().to_string()) && e.contains("empty (0 bytes)"),
        "{e}"
    );
    assert!(e.contains("host init --force"), "{e}");
    std::fs::remove_file(&db).unwrap();
    let e = refusal(dir.path(), &clock);
    assert!(e.contains("is missing"), "{e}");
    // Another store's database in its place is refused too.
    let other = tempdir().unwrap();
    let s = open(other.path(), &clock).unwrap();
    s.close().await;
    std::fs::copy(other.path().join(DB_FILE), &db).unwrap();
    let e = refusal(dir.path(), &clock);
    assert!(e.contains("replaced by another file"), "{e}");
    let moved = move_aside(dir.path(), 7).unwrap();
    assert_eq!(moved.len(), 2, "{moved:?}");
    let store = open(dir.path(), &clock).unwrap();
    assert!(store.queue("q").unwrap().is_empty().await.unwrap());
    store.close().await;
}

/// A store from before markers existed is adopted: its marker is written
/// from the id it is given, and its tasks stay.
#[tokio::test]
async fn a_store_without_a_marker_is_adopted() {
    let (dir, clock) = closed_store_with(3).await;
    std::fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
    let store = open(dir.path(), &clock).unwrap();
    assert_eq!(store.queue("q").unwrap().len().await.unwrap(), 3);
    store.close().await;
    assert!(dir.path().join(MARKER_FILE).exists());
}

/// Damage SQLite finds while the store runs fails every later call at once
/// with the cause, and `failed` resolves so the host stops.
#[tokio::test]
async fn damage_found_while_running_fails_the_store_for_good() {
    let (dir, _clock, store) = new_store();
    let q = store.queue("q").unwrap();
    push_n(&*q, 3).await;
    // Damage the schema from another connection: the store's connection
    // rereads it at its next statement and SQLite reports it malformed.
    taskhost_fixtures::sqlite::damage_schema(&dir.path().join(DB_FILE));
    let e = q.lease(10, TTL).await.unwrap_err();
    assert!(matches!(e, QueueError::Corrupt { .. }), "{e}");
    let failed = tokio::time::timeout(Duration::from_secs(30), store.failed())
        .await
        .expect("failed() resolves");
    assert!(failed.to_string().contains("malformed"), "{failed}");
    // Nothing more is written: a push fails with the same cause.
    let e = q.push(NewTask::new("x")).await.unwrap_err().to_string();
    assert!(e.contains("damaged") && e.contains(DB_FILE), "{e}");
    store.close().await;
}

/// Processes that open a new store at the same moment (`host run` beside
/// `host hosts`) all open it: creating the tables is one write transaction,
/// not statements that each upgrade a read to a write and can find the
/// database changed under them ("database is locked").
#[tokio::test]
async fn a_new_store_opened_at_once_by_many_opens_for_all() {
    for _ in 0..5 {
        let dir = tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (dir, clock, barrier) = (dir.path().to_owned(), clock.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    DiskStore::open(&dir, DiskOptions::default(), clock).map(|_| ())
                })
            })
            .collect();
        for o in openers {
            o.join().unwrap().unwrap();
        }
    }
}

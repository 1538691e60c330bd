//! Redis-specific behaviour; the shared checks are in `conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::codec::{Element, pack, unpack, unpack_dead};
use super::*;
use crate::clock::{self, ManualClock};
use crate::queue::{Action, NewTask, Pushed, Task, settle_all, wake_checks};
use taskhost_fixtures::redis::RedisServer;

/// An idle host waiting for work is woken by another host's push (or
/// release) through Redis, long before its time-out, and again after
/// Redis restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_another_host_wakes_a_waiting_host() {
    const LONG: Duration = Duration::from_secs(3600);
    let mut server = RedisServer::start().unwrap();
    let open =
        || RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let (idle, busy) = (open(), open());
    let (waiting, pushing) = (idle.queue("jobs").unwrap(), busy.queue("jobs").unwrap());
    let mut listening = idle.listening();
    listening.wait_for(|&on| on).await.unwrap();
    let wait = |q: &Arc<dyn BaseQueue>| {
        let q = q.clone();
        tokio::spawn(async move { q.wait_for_work(LONG).await })
    };
    // The listener's first subscription wakes every waiter once (it
    // cannot know what it missed); use that permit up.
    waiting.wait_for_work(Duration::from_millis(1)).await;

    let waiter = wait(&waiting);
    pushing
        .push(NewTask::new("later").delayed(LONG))
        .await
        .unwrap();
    pushing.push(NewTask::new("now")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the push woke the waiting host")
        .unwrap();
    let leased = waiting.lease(10, LONG).await.unwrap();
    assert_eq!(leased.len(), 1, "only the ready task");

    // A release hands the task back and wakes a waiter too (through
    // Redis, as it would on another host).
    let waiter = wait(&waiting);
    waiting
        .settle(settle_all(&[leased[0].lease()], Action::Release))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the release woke the waiting host")
        .unwrap();

    // After a Redis restart the listener subscribes again.
    server.kill();
    listening.wait_for(|&on| !on).await.unwrap();
    server.restart().unwrap();
    listening.wait_for(|&on| on).await.unwrap();
    wake_checks::a_push_after_the_restart_wakes_the_waiting_host(&waiting, &pushing).await;
    idle.close().await;
    busy.close().await;
}

#[tokio::test]
async fn a_batch_settles_each_lease_once_and_dead_letters_are_trimmed() {
    let server = RedisServer::start().unwrap();
    let opts = RedisOptions {
        dead_capacity: 2,
        ..RedisOptions::default()
    };
    let store = RedisStore::open(&server.url(), opts, ManualClock::new(1_000)).unwrap();
    let q = store.queue("batch").unwrap();
    let tasks = (0..5).map(|i| NewTask::new(format!("t{i}")).unique(format!("k{i}")));
    q.push_batch(tasks.collect()).await.unwrap();
    let got = q.lease(5, Duration::from_secs(10)).await.unwrap();
    let mut s = settle_all(&[got[0].lease(), got[0].lease()], Action::Ack);
    s.extend(settle_all(
        &got[1..].iter().map(Task::lease).collect::<Vec<_>>(),
        Action::DeadLetter("no".into()),
    ));
    let done = q.settle(s).await.unwrap();
    assert_eq!(
        (done.applied, done.lost),
        (5, 1),
        "the repeated ack is refused"
    );
    let dead = q.dead_letters(10).await.unwrap();
    let ids: Vec<_> = dead.iter().map(|d| d.task.id).collect();
    assert_eq!(ids, vec![got[4].id, got[3].id], "newest two kept");
    assert_eq!(dead[0].task.unique_key.as_deref(), Some("k4"));
    assert_eq!(q.stats().await.unwrap().dead, 2);
    assert_eq!(
        store.known_queues().await.unwrap(),
        vec!["batch".to_string()]
    );
    let again = q.push(NewTask::new("x").unique("k1")).await.unwrap();
    assert!(matches!(again, Pushed::Created(_)), "a dead key is free");
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = RedisStore::open(&url, RedisOptions::default(), ManualClock::new(0)).unwrap();
    let e = store.ping().await.unwrap_err().to_string();
    assert!(e.contains("unreachable") && e.contains(&url), "{e}");
    let q = store.queue("q").unwrap();
    let e = q.push(NewTask::new("x")).await.unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");
}

/// A lease is its holder's: another handle (another host) cannot
/// settle it, and the task comes back when the lease expires.
#[tokio::test]
async fn only_the_holder_settles_a_lease() {
    let server = RedisServer::start().unwrap();
    let clock = ManualClock::new(1_000);
    let open = || RedisStore::open(&server.url(), RedisOptions::default(), clock.clone());
    let (a, b) = (open().unwrap(), open().unwrap());
    let (qa, qb) = (a.queue("q").unwrap(), b.queue("q").unwrap());
    qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
    let ttl = Duration::from_secs(10);
    let got = qa.lease(1, ttl).await.unwrap();
    assert_eq!(got[0].unique_key.as_deref(), Some("k:1"));
    let refused = qb.ack(&[got[0].lease()]).await.unwrap();
    assert_eq!((refused.applied, refused.lost), (0, 1));
    clock.advance(ttl);
    let again = qb.lease(1, ttl).await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (got[0].id, 2));
    assert_eq!(qb.ack(&[again[0].lease()]).await.unwrap().applied, 1);
    let pushed = qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
    assert!(matches!(pushed, Pushed::Created(_)), "the key was freed");
}

/// Issue 14 item 5: a restart that loses recent writes rolls `bseq` and
/// `seq` back, so another host's lease gets the batch number (and task
/// ids) a stale holder still remembers. The stale holder's renewals and
/// settlements are refused, and the other host's tasks and unique keys
/// stay intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_cannot_settle_a_batch_reused_after_a_restart() {
    let mut server = RedisServer::start().unwrap();
    let clock = ManualClock::new(1_000);
    let open = |url: &str| RedisStore::open(url, RedisOptions::default(), clock.clone()).unwrap();
    let (a, b) = (open(&server.url()), open(&server.url()));
    let (qa, qb) = (a.queue("q").unwrap(), b.queue("q").unwrap());
    let ttl = Duration::from_secs(10);
    // The snapshot the restart comes back to: an empty queue.
    assert!(server.command(&["SAVE"]).unwrap().starts_with("+OK"));
    let keyed = |who: &str| {
        (0..2)
            .map(|i| NewTask::new(format!("{who}{i}")).unique(format!("{who}-key{i}")))
            .collect::<Vec<_>>()
    };
    qa.push_batch(keyed("a")).await.unwrap();
    let stale = qa.lease(2, ttl).await.unwrap();
    assert_eq!(stale.len(), 2);

    // Redis restarts from the snapshot: A's push and lease are gone.
    server.restart().unwrap();
    for store in [&a, &b] {
        // The connection manager reconnects on its own.
        while store.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    qb.push_batch(keyed("b")).await.unwrap();
    let live = qb.lease(2, ttl).await.unwrap();
    let ids = |t: &[Task]| t.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(&live), ids(&stale), "task ids were reused too");

    let leases = |t: &[Task]| t.iter().map(Task::lease).collect::<Vec<_>>();
    assert_eq!(qa.renew(&leases(&stale), ttl).await.unwrap(), 0);
    let dead = qa
        .settle(settle_all(
            &leases(&stale[..1]),
            Action::DeadLetter("x".into()),
        ))
        .await
        .unwrap();
    assert_eq!((dead.applied, dead.lost), (0, 1), "part of the batch");
    let acked = qa.ack(&leases(&stale[1..])).await.unwrap();
    assert_eq!((acked.applied, acked.lost), (0, 1));

    let s = qb.stats().await.unwrap();
    assert_eq!((s.leased, s.dead), (2, 0), "B's batch is intact");
    assert_eq!(qb.renew(&leases(&live), ttl).await.unwrap(), 2);
    let done = qb.ack(&leases(&live)).await.unwrap();
    assert_eq!((done.applied, done.lost), (2, 0));
    for t in keyed("b") {
        let p = qb.push(t).await.unwrap();
        assert!(matches!(p, Pushed::Created(_)), "B's keys were freed");
    }
}

/// A stale holder whose batch number now names another host's batch of
/// the same size cannot delete it by acking the whole batch.
#[tokio::test]
async fn a_stale_whole_batch_ack_is_refused_after_bseq_rolls_back() {
    let (server, clock, store) = manual_store();
    let other = RedisStore::open(&server.url(), RedisOptions::default(), clock.clone()).unwrap();
    let (qa, qb) = (store.queue("q").unwrap(), other.queue("q").unwrap());
    let ttl = Duration::from_secs(10);
    qa.push(NewTask::new("a").unique("ka")).await.unwrap();
    let stale = qa.lease(1, ttl).await.unwrap();
    // Every write since an empty snapshot lost, as a restart from it
    // would: the batch counter, the task ids and the lease.
    assert!(server.command(&["FLUSHDB"]).unwrap().starts_with("+OK"));
    qb.push(NewTask::new("b").unique("kb")).await.unwrap();
    let live = qb.lease(1, ttl).await.unwrap();
    assert_eq!(live[0].payload, b"b");
    let acked = qa.ack(&[stale[0].lease()]).await.unwrap();
    assert_eq!((acked.applied, acked.lost), (0, 1), "the stale ack is lost");
    assert_eq!(qb.stats().await.unwrap().leased, 1, "B's batch is intact");
    assert_eq!(live[0].id, stale[0].id, "the task id was reused too");
    let dup = qb.push(NewTask::new("b2").unique("kb")).await.unwrap();
    assert_eq!(dup, Pushed::Duplicate(live[0].id), "B's key is still held");
    assert_eq!(qb.ack(&[live[0].lease()]).await.unwrap().applied, 1);
}

/// A private server and a store on it, its clock at 1 s and driven by hand.
fn manual_store() -> (RedisServer, Arc<ManualClock>, RedisStore) {
    let server = RedisServer::start().unwrap();
    let clock = ManualClock::new(1_000);
    let store = RedisStore::open(&server.url(), RedisOptions::default(), clock.clone()).unwrap();
    (server, clock, store)
}

/// Settling part of a leased batch keeps the rest held: renewable,
/// settleable later, and reclaimed if its lease expires.
#[tokio::test]
async fn part_of_a_batch_settles_and_the_rest_stays_held() {
    let (_server, clock, store) = manual_store();
    let q = store.queue("q").unwrap();
    let tasks = (0..4).map(|i| NewTask::new(format!("t{i}")).unique(format!("k{i}")));
    q.push_batch(tasks.collect()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let got = q.lease(4, ttl).await.unwrap();
    assert_eq!(q.ack(&[got[0].lease()]).await.unwrap().applied, 1);
    assert_eq!(
        q.retry(got[1].lease(), clock.now_ms() + 1)
            .await
            .unwrap()
            .applied,
        1
    );
    let s = q.stats().await.unwrap();
    assert_eq!((s.leased, s.delayed), (2, 1));
    assert_eq!(
        q.renew(&[got[0].lease(), got[2].lease()], ttl)
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.ack(&[got[2].lease()]).await.unwrap().applied, 1);
    clock.advance(ttl);
    let back = q.lease(4, ttl).await.unwrap();
    let mut seen: Vec<_> = back
        .iter()
        .map(|t| (t.payload.clone(), t.attempt))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(b"t1".to_vec(), 2), (b"t3".to_vec(), 2)]);
    assert_eq!(
        q.ack(&back.iter().map(Task::lease).collect::<Vec<_>>())
            .await
            .unwrap()
            .applied,
        2
    );
    assert!(q.is_empty().await.unwrap());
    for k in ["k0", "k1", "k2", "k3"] {
        let p = q.push(NewTask::new("again").unique(k)).await.unwrap();
        assert!(matches!(p, Pushed::Created(_)), "{k} was freed");
    }
}

/// An element this layout did not write (an older version's queue) is
/// reported, kept in Redis, and does not hold up the tasks beside it.
#[tokio::test]
async fn a_foreign_element_is_kept_and_does_not_block_the_queue() {
    let (server, clock, store) = manual_store();
    let q = store.queue("q").unwrap();
    q.push(NewTask::new("a")).await.unwrap();
    server
        .command(&["RPUSH", "taskhost:{q}:ready", "17"])
        .unwrap();
    q.push(NewTask::new("b")).await.unwrap();
    let ttl = Duration::from_secs(10);
    let got = q.lease(10, ttl).await.unwrap();
    let payloads: Vec<_> = got.iter().map(|t| t.payload.as_slice()).collect();
    assert_eq!(payloads, [b"a", b"b"]);
    let leases: Vec<_> = got.iter().map(Task::lease).collect();
    assert_eq!(q.ack(&leases).await.unwrap().applied, 2);
    assert_eq!(
        q.stats().await.unwrap().leased,
        1,
        "the foreign element stays"
    );
    clock.advance(ttl);
    q.push(NewTask::new("c")).await.unwrap();
    let got = q.lease(10, ttl).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "the expired lease's element came back, still unread"
    );
    assert_eq!(got[0].payload, b"c");
    assert_eq!(q.stats().await.unwrap().leased, 2);
}

#[test]
fn elements_round_trip() {
    let mut packed = Vec::new();
    for key in [None, Some(""), Some("a:b:c"), Some("ключ")] {
        pack(&mut packed, 1_234, key, b"x:y\n");
        let mut e = format!("{}:{}:", u64::MAX, u32::MAX).into_bytes();
        e.extend_from_slice(&packed);
        let got = unpack(e.clone()).unwrap();
        let want = Element {
            id: u64::MAX,
            attempts: u32::MAX,
            enqueued_at: 1_234,
            key: key.map(str::to_owned),
            payload: b"x:y\n".to_vec(),
        };
        assert_eq!(got, want);
        let mut dead = b"77:6:why:no".to_vec();
        dead.extend_from_slice(&e);
        assert_eq!(unpack_dead(dead), Some((77, "why:no".to_owned(), want)));
    }
    assert_eq!(
        unpack(b"1:0:12:5:ab".to_vec()).ok(),
        None,
        "key longer than the value"
    );
    assert_eq!(
        unpack(b"1:x:12:-:ab".to_vec()).ok(),
        None,
        "attempts not a number"
    );
}

#[test]
fn passwords_are_not_shown() {
    assert_eq!(
        redact("redis://user:secret@db:6379/2"),
        "redis://***@db:6379/2"
    );
    assert_eq!(
        redact("redis://127.0.0.1:6379/0"),
        "redis://127.0.0.1:6379/0"
    );
}

/// Issue 14 item 10: a password in a unix-socket URL's query
/// (`redis+unix:///path?pass=...`) is not shown in the store's
/// description, its errors, or the backend's name.
#[tokio::test]
async fn unix_socket_passwords_are_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.display();
    for url in [
        format!("redis+unix://{sock}?db=0&pass=hunter2"),
        format!("unix://{sock}?pass=hunter2&db=1"),
        format!("redis+unix://{sock}?user=u&pa%73s=hunter2"),
        format!("redis+unix://{sock}?password=hunter2"),
    ] {
        let shown = redact(&url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("none.sock"), "{shown}");
        let store = RedisStore::open(&url, RedisOptions::default(), ManualClock::new(0)).unwrap();
        let d = store.describe();
        assert!(!d.contains("hunter2") && d.contains("none.sock"), "{d}");
        let e = store.ping().await.unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("none.sock"), "{e}");
        let cfg = crate::queue::BackendConfig::Redis {
            url: url.clone(),
            options: RedisOptions::default(),
        };
        assert!(!cfg.to_string().contains("hunter2"), "{cfg}");
    }
    assert_eq!(
        redact("redis://u:p@db:6379/0?pass=x&db=2"),
        "redis://***@db:6379/0?pass=***&db=2"
    );
    assert_eq!(redact("redis://db/0?x=a@b"), "redis://db/0?x=a@b");
}

/// Issue 14 item 6: one lease call moves back at most its budget of
/// expired elements and bytes, so a batch bigger than that comes back in
/// parts over several calls, each task once and counted as an attempt.
#[tokio::test]
async fn a_big_expired_batch_comes_back_in_parts_within_the_budget() {
    let (server, clock, store) = manual_store();
    let q = store.queue("q").unwrap();
    let tasks = (0..30).map(|i| NewTask::new(format!("{i:04}").repeat(256)));
    q.push_batch(tasks.collect()).await.unwrap();
    let ttl = Duration::from_secs(10);
    let first = q.lease(30, ttl).await.unwrap();
    assert_eq!(first.len(), 30, "one batch under the default budget");
    clock.advance(ttl);
    let with = |opts: RedisOptions| {
        let s = RedisStore::open(&server.url(), opts, clock.clone()).unwrap();
        (s.queue("q").unwrap(), s)
    };
    let (by_count, _a) = with(RedisOptions {
        script_elements: 10,
        ..RedisOptions::default()
    });
    // Elements are just over 1 KiB: two fit.
    let (by_bytes, _b) = with(RedisOptions {
        script_bytes: 2_500,
        ..RedisOptions::default()
    });
    let ready = || server.command(&["LLEN", "taskhost:{q}:ready"]).unwrap();
    let mut seen = by_count.lease(1, ttl).await.unwrap();
    assert_eq!(ready(), ":9\r\n", "10 moved back, 1 handed out");
    seen.extend(by_bytes.lease(1, ttl).await.unwrap());
    assert_eq!(ready(), ":10\r\n", "2 more moved back, 1 handed out");
    assert_eq!(q.stats().await.unwrap().len(), 30);
    loop {
        let got = by_count.lease(10, ttl).await.unwrap();
        if got.is_empty() {
            break;
        }
        seen.extend(got);
    }
    let mut ids: Vec<_> = seen.iter().map(|t| t.id).collect();
    ids.sort();
    let want: Vec<_> = first.iter().map(|t| t.id).collect();
    assert_eq!(ids, want, "every task back once");
    assert!(seen.iter().all(|t| t.attempt == 2));
    assert_eq!(q.stats().await.unwrap().leased, 30);
}

/// An outage first seen by a plain command (a pause check, a heartbeat)
/// is remembered, so the next script that gets through logs that Redis is
/// back and for how long: before, only script failures started an outage,
/// and a host whose pause check saw Redis go never said it came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_seen_by_any_command_ends_at_the_next_script_answer() {
    let mut server = RedisServer::start().unwrap();
    let store = RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let queue = store.queue("jobs").unwrap();
    queue.push(NewTask::new("x")).await.unwrap();
    let outage = |s: &RedisStore| {
        s.shared
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    };
    assert!(!outage(&store));
    server.kill();
    let admin = queue.admin().expect("Redis queues have operator actions");
    assert!(admin.is_paused().await.is_err(), "Redis is gone");
    assert!(outage(&store), "the outage is remembered");
    server.restart().unwrap();
    // The connection manager reconnects on its own; a lease gets through.
    let mut leased = Err(QueueError::Config(String::new()));
    for _ in 0..100 {
        leased = queue.lease(10, Duration::from_secs(60)).await;
        if leased.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leased.unwrap();
    assert!(!outage(&store), "the script's answer ended the outage");
}

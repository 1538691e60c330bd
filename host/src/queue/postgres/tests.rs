//! PostgreSQL-specific behaviour; the shared checks are in `conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock;
use crate::queue::NewTask;
use taskhost_fixtures::postgres::PostgresServer;

async fn server() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .unwrap()
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, PostgresOptions::default(), clock::system()).unwrap()
}

/// `taskhost.push()` inside a producer's transaction: a rollback leaves no
/// task, a commit makes exactly one, which a host then leases.
#[tokio::test]
async fn transactional_push_exists_only_if_the_transaction_commits() {
    let server = server().await;
    let store = open(&server.url());
    store.ping().await.unwrap(); // creates the schema
    let q = store.queue("orders").unwrap();
    let mut producer = client(&server.url()).await;
    producer
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();

    let tx = producer.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (1)", &[])
        .await
        .unwrap();
    tx.query_one(
        "SELECT taskhost.push('orders', $1::bytea)",
        &[&b"order 1".as_slice()],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        q.len().await.unwrap(),
        0,
        "a rolled-back push leaves no task"
    );

    let tx = producer.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (2)", &[])
        .await
        .unwrap();
    let id: i64 = tx
        .query_one(
            "SELECT taskhost.push('orders', $1::bytea, unique_key => 'order-2')",
            &[&b"order 2".as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    // The same key again in the same transaction names the same task.
    let again: i64 = tx
        .query_one("SELECT taskhost.push('orders', 'x'::bytea, 'order-2')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, again);
    tx.commit().await.unwrap();
    assert_eq!(q.len().await.unwrap(), 1, "a committed push makes one task");
    let got = q.lease(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"order 2");
    assert_eq!(got[0].unique_key.as_deref(), Some("order-2"));
    assert_eq!(got[0].id, id as u64);

    // A delayed push is not visible before its time.
    producer
        .query_one(
            "SELECT taskhost.push('orders', 'later'::bytea, delay => interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.delayed, s.leased), (1, 1));
    store.close().await;
}

/// A database migrated by a newer host is refused with a message saying so.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let server = server().await;
    let store = open(&server.url());
    store.ping().await.unwrap();
    client(&server.url())
        .await
        .execute(
            "INSERT INTO taskhost.schema_migrations (version, name) VALUES ($1, 'future')",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let older = open(&server.url());
    let err = older.ping().await.unwrap_err().to_string();
    assert!(err.contains("newer than this host knows"), "{err}");
    let err = older
        .queue("q")
        .unwrap()
        .push(NewTask::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Config(_)), "{err}");
    // Another schema in the same database is independent.
    let other = PostgresStore::open(
        &server.url(),
        PostgresOptions {
            schema: "other_taskhost".into(),
            ..PostgresOptions::default()
        },
        clock::system(),
    )
    .unwrap();
    other
        .queue("q")
        .unwrap()
        .push(NewTask::new("x"))
        .await
        .unwrap();
}

/// An idle host waiting for work is woken by another host's push through
/// `NOTIFY`, long before its time-out, and again after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_another_host_wakes_a_waiting_host() {
    const LONG: Duration = Duration::from_secs(3600);
    let mut server = server().await;
    let (idle, busy) = (open(&server.url()), open(&server.url()));
    let (waiting, pushing) = (idle.queue("jobs").unwrap(), busy.queue("jobs").unwrap());
    pushing.push(NewTask::new("first")).await.unwrap(); // creates the schema
    let mut listening = idle.listening();
    listening.wait_for(|&on| on).await.unwrap();
    // The first LISTEN wakes every waiter once; use that permit up.
    waiting.wait_for_work(Duration::from_millis(1)).await;
    let wait = |q: &Arc<dyn BaseQueue>| {
        let q = q.clone();
        tokio::spawn(async move { q.wait_for_work(LONG).await })
    };

    let waiter = wait(&waiting);
    pushing.push(NewTask::new("now")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the push woke the waiting host")
        .unwrap();

    // Everything the listener reports from here on is about the restart;
    // wait for it to be listening again, whether or not its "lost" report
    // was seen first (both may come before this task looks).
    listening.borrow_and_update();
    let restarted =
        tokio::task::spawn_blocking(move || server.restart_immediate().map(|()| server));
    let server = restarted.await.unwrap().unwrap();
    loop {
        listening.changed().await.unwrap();
        if *listening.borrow_and_update() {
            break;
        }
    }
    waiting.wait_for_work(Duration::from_millis(1)).await;
    let waiter = wait(&waiting);
    // The pool replaces its dead connections on use; retry the push until
    // the server takes it.
    while pushing.push(NewTask::new("again")).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("a push after the restart woke the waiting host")
        .unwrap();
    assert_eq!(
        waiting.len().await.unwrap(),
        3,
        "nothing committed was lost"
    );
    idle.close().await;
    busy.close().await;
    drop(server);
}

/// The plain-push statement is the keyed one without its conflict clause:
/// the clause is found (a change to `sql/push.sql` must keep it one line).
#[test]
fn the_plain_push_statement_drops_only_the_conflict_clause() {
    let s = Statements::new("taskhost");
    assert!(s.push.contains("ON CONFLICT (queue, unique_key)"));
    assert!(!s.push_plain.contains("ON CONFLICT (queue, unique_key)"));
    assert!(
        s.push_plain.contains("ON CONFLICT DO NOTHING"),
        "the queue name's insert keeps its own"
    );
}

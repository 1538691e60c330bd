//! PostgreSQL-specific behaviour; the shared checks are in `conformance.rs`.

use std::time::Duration;

use super::*;
use crate::clock;
use crate::queue::conformance::push_n;
use crate::queue::{NewTask, wake_checks};
use taskhost_fixtures::postgres::PostgresServer;

pub(super) async fn server() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .unwrap()
}

pub(super) async fn client(url: &str) -> tokio_postgres::Client {
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
    push_n(&*other.queue("q").unwrap(), 1).await;
}

/// An idle host waiting for work is woken by another host's push through
/// `NOTIFY`, long before its time-out, and again after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_another_host_wakes_a_waiting_host() {
    let mut server = server().await;
    let (idle, busy) = (open(&server.url()), open(&server.url()));
    let (waiting, pushing) = (idle.queue("jobs").unwrap(), busy.queue("jobs").unwrap());
    pushing.push(NewTask::new("first")).await.unwrap(); // creates the schema
    let mut listening = idle.listening();
    listening.wait_for(|&on| on).await.unwrap();
    // The first LISTEN wakes every waiter once; use that permit up.
    waiting.wait_for_work(Duration::from_millis(1)).await;

    let waiter = wake_checks::spawn_wait(&waiting);
    pushing.push(NewTask::new("now")).await.unwrap();
    wake_checks::woken(waiter, "the push").await;

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
    wake_checks::a_push_after_the_restart_wakes_the_waiting_host(&waiting, &pushing).await;
    assert_eq!(
        waiting.len().await.unwrap(),
        3,
        "nothing committed was lost"
    );
    idle.close().await;
    busy.close().await;
    drop(server);
}

/// A host vacuums the tasks table itself after every `vacuum_every` tasks
/// it settled, so its dead rows are reused without waiting for autovacuum.
#[tokio::test]
async fn settling_vacuums_the_tasks_table_every_so_many_tasks() {
    let server = server().await;
    let opts = PostgresOptions {
        vacuum_every: 25,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(&server.url(), opts, clock::system()).unwrap();
    let q = store.queue("jobs").unwrap();
    let vacuums = || async {
        client(&server.url())
            .await
            .query_one(
                "SELECT vacuum_count FROM pg_stat_user_tables
                 WHERE schemaname = 'taskhost' AND relname = 'tasks'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    q.push_batch((0..60).map(|i| NewTask::new(format!("t{i}"))).collect())
        .await
        .unwrap();
    let mut settled = 0;
    let mut counts = Vec::new();
    while settled < 60 {
        let got = q.lease(10, Duration::from_secs(60)).await.unwrap();
        let leases: Vec<_> = got.iter().map(|t| t.lease()).collect();
        settled += q.ack(&leases).await.unwrap().applied;
        counts.push(vacuums().await);
    }
    // 25 and 50 were crossed after the 3rd and the 5th batch.
    assert_eq!(counts, [0, 0, 1, 1, 2, 2], "vacuums after each batch of 10");
    store.close().await;
}

/// The most rows any scan of a table or index in a plan produced (over all
/// its loops), from `EXPLAIN (ANALYZE, FORMAT JSON)`.
fn most_rows(plan: &serde_json::Value) -> u64 {
    fn walk(node: &serde_json::Value) -> u64 {
        let scans = node.get("Relation Name").is_some() || node.get("Index Name").is_some();
        let own = if scans {
            node["Actual Rows"].as_u64().unwrap_or(0) * node["Actual Loops"].as_u64().unwrap_or(1)
        } else {
            0
        };
        let kids = node["Plans"]
            .as_array()
            .map_or(0, |ps| ps.iter().map(walk).max().unwrap_or(0));
        own.max(kids)
    }
    walk(&plan[0]["Plan"])
}

/// The planner believes `tasks` empty after a vacuum of an empty queue;
/// a backlog then builds. Leasing and acking a batch of 100 from 50,000
/// still read only about the batch's rows, not the whole table (the lease
/// used to join the table with the batch and walk all of it per row of the
/// batch: 14 s a lease on 185,000 rows; or to bitmap-scan every due row and
/// sort them).
#[tokio::test]
async fn a_batch_reads_only_its_rows_even_when_the_planner_thinks_the_table_empty() {
    let server = server().await;
    let store = open(&server.url());
    store.ping().await.unwrap();
    let c = client(&server.url()).await;
    // A drained backlog, vacuumed while hosts held the table (so its pages
    // stay): the table has pages and, to the planner, no rows.
    let backlog =
        "INSERT INTO taskhost.tasks (id, head, queue, ids, payloads, enqueued_at, visible_at)
         SELECT i, i, 'jobs', ARRAY[i], ARRAY[convert_to(repeat('x', 100), 'UTF8')], 0, 0
         FROM (SELECT nextval('taskhost.task_ids') AS i FROM generate_series(1, 50000)) s";
    c.batch_execute(backlog).await.unwrap();
    c.batch_execute("DELETE FROM taskhost.tasks").await.unwrap();
    c.batch_execute("VACUUM (TRUNCATE false) taskhost.tasks")
        .await
        .unwrap();
    c.batch_execute(backlog).await.unwrap();
    let reltuples: f32 = c
        .query_one(
            "SELECT reltuples FROM pg_class WHERE oid = 'taskhost.tasks'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reltuples, 0.0, "the planner believes the table empty");
    // As the host's connections run them: generic plans, no seq scans.
    c.batch_execute(
        "SET enable_seqscan = off; SET enable_bitmapscan = off; \
         SET plan_cache_mode = force_generic_plan",
    )
    .await
    .unwrap();
    let sql = Statements::new("taskhost");
    let explain = |stmt: &str, args: &str| {
        format!("PREPARE s AS {stmt}; EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE s({args})")
    };
    let json = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> serde_json::Value {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap()
    };
    let lease = json(
        c.simple_query(&explain(&sql.lease, "'jobs', 1, 100, 99, 7, NULL, 101"))
            .await
            .unwrap(),
    );
    assert!(
        most_rows(&lease) <= 200,
        "the lease read {} rows: {lease}",
        most_rows(&lease)
    );
    c.batch_execute("DEALLOCATE s").await.unwrap();
    let held = c
        .query_one(
            "SELECT array_agg(id)::text, array_agg(nonce)::text
             FROM taskhost.tasks WHERE nonce = 7",
            &[],
        )
        .await
        .unwrap();
    let (ids, nonces): (String, String) = (held.get(0), held.get(1));
    let ack = json(
        c.simple_query(&explain(&sql.ack, &format!("'{ids}', '{nonces}'")))
            .await
            .unwrap(),
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM taskhost.tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 49_900, "the ack deleted the batch");
    assert!(
        most_rows(&ack) <= 200,
        "the ack read {} rows: {ack}",
        most_rows(&ack)
    );
    store.close().await;
}

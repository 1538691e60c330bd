//! Plugins making outbound HTTP through `wasi:http` and the host's pooled
//! client, against a real server on 127.0.0.1 that counts connections:
//! plain http://, and https:// with a CA made at test time (HTTP/2 where the
//! server offers it, HTTP/1.1 keep-alive where it does not).

use crate::support::{self, HostToml, quoted};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use taskhost::clock;
use taskhost::http::HttpOptions;
use taskhost::plugin::{Limits, PluginSpec, Runtime, RuntimeOptions, SourcePlugin};
use taskhost::pool::{PoolConfig, PoolSnapshot, WorkerPool};
use taskhost::queue::memory::{MemoryOptions, MemoryStore};
use taskhost::queue::{BaseQueue, NewTask, QueueStore};
use taskhost::source::{Poller, Source, SourceConfig};
use taskhost_fixtures::http::{CountingServer, Handler, too_many_requests};
use taskhost_fixtures::tls::loopback_tls;

fn spec(name: &str, url: &str, allowed: &[String]) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: support::plugin(name),
        config: [("url".to_string(), url.to_string())].into(),
        dir: None,
        limits: Limits::default(),
        allowed_hosts: allowed.to_vec(),
        enqueue_to: None,
    }
}

fn runtime(pool: usize) -> Runtime {
    runtime_trusting(pool, None)
}

/// A runtime whose client also trusts the CA in `ca_file`.
fn runtime_trusting(pool: usize, ca_file: Option<PathBuf>) -> Runtime {
    Runtime::with_options(RuntimeOptions {
        http: HttpOptions {
            pool_idle_per_host: pool,
            host_concurrency: pool,
            ca_file,
            ..HttpOptions::default()
        },
        ..RuntimeOptions::default()
    })
    .unwrap()
}

fn store() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new(
        MemoryOptions {
            capacity: 100_000,
            ..MemoryOptions::default()
        },
        clock::system(),
    ))
}

async fn drained(queue: &Arc<dyn BaseQueue>) {
    loop {
        let s = queue.stats().await.unwrap();
        if s.is_empty() {
            return;
        }
        queue.wait_for_work(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_plugin_requests_use_no_more_connections_than_the_pool() {
    let rows = Arc::new(AtomicU64::new(0));
    let server = CountingServer::start(counting_rows(&rows)).await.unwrap();
    let runtime = runtime(8);
    let stats = ship_rows(&runtime, &server, 10_000).await;
    assert_eq!(stats.done, 10_000);
    assert_eq!(rows.load(Ordering::Relaxed), 10_000);
    let (reqs, conns) = (
        server.stats().requests.load(Ordering::Relaxed),
        server.stats().connections.load(Ordering::Relaxed),
    );
    assert_eq!(reqs, 10_000, "one request per batch");
    // The connector caps open connections at the pool's 8 (each holds a
    // permit while open; `http::tests::ten_thousand_requests_reuse_the_pool`
    // checks the client alone). Through plugins, under a loaded test run,
    // one of them was once closed and replaced (9 in all), so this counts
    // reuse: a handful of connections, not one per request.
    assert!(
        conns <= 2 * 8,
        "{reqs} requests opened {conns} connections (pool 8)"
    );
    server.shutdown().await;
    runtime.shutdown();
}

#[tokio::test]
async fn a_plugin_without_allowed_hosts_reaches_nobody() {
    let server = CountingServer::start(Arc::new(|_, _| {
        http::Response::new(Full::new(Bytes::new()))
    }))
    .await
    .unwrap();
    let runtime = runtime(4);
    let store = store();
    let plugin = runtime
        .load(spec("log-report", &server.url(), &[]), store.clone())
        .unwrap();
    let queue = store.queue("logs").unwrap();
    queue.push(NewTask::new("{}")).await.unwrap();
    let cfg = PoolConfig {
        max_latency: Duration::ZERO,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), Arc::new(plugin), cfg, clock::system()).unwrap();
    drained(&queue).await;
    let stats = pool.stats();
    pool.shutdown().await;
    // Each handler call made one request, and each was refused. (Usually
    // one call; on a loaded machine a call can fail as a whole first, e.g.
    // past its time limit, and the task comes back for another.)
    let calls = stats.snapshot().handler_calls;
    let refused = runtime.http().stats().refused.load(Ordering::Relaxed);
    assert!(
        calls >= 1 && refused == calls,
        "{refused} refused, {:?}",
        stats.snapshot()
    );
    assert_eq!(server.stats().connections.load(Ordering::Relaxed), 0);
    let dead = queue.dead_letters(1).await.unwrap();
    assert_eq!(dead.len(), 1, "the refused row is kept, not lost");
    assert!(
        dead[0]
            .reason
            .contains("not in this plugin's allowed_hosts"),
        "the plugin was told why: {}",
        dead[0].reason
    );
    server.shutdown().await;
    runtime.shutdown();
}

#[tokio::test]
async fn http_source_feeds_its_queue_through_the_poller() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let server = CountingServer::start(Arc::new(move |parts, _| {
        let mut log = log.lock().unwrap();
        log.push(parts.uri.to_string());
        if log.len() == 1 {
            http::Response::new(Full::new(Bytes::from_static(
                br#"["a", {"payload": "b", "unique_key": "k-b"}, "c"]"#,
            )))
        } else {
            let mut r = http::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = http::StatusCode::NO_CONTENT;
            r
        }
    }))
    .await
    .unwrap();
    let runtime = runtime(4);
    let store = store();
    let url = format!("{}/tasks", server.url());
    let source = SourcePlugin::load(
        &runtime,
        spec("http-source", &url, &[server.addr().to_string()]),
        "jobs",
        store.clone(),
    )
    .unwrap();
    let queue = store.queue("jobs").unwrap();
    let cfg = SourceConfig {
        poll_interval: Duration::from_millis(20),
        poll_interval_max: Duration::from_millis(40),
        capacity: 10,
        ..SourceConfig::default()
    };
    let poller = Poller::start(Arc::new(source), queue.clone(), cfg).unwrap();
    while queue.stats().await.unwrap().pending < 3 {
        queue.wait_for_work(Duration::from_millis(50)).await;
    }
    // Wait for an empty poll after the full one.
    while asked.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poller.shutdown().await;
    let tasks = queue.lease(10, Duration::from_secs(10)).await.unwrap();
    let payloads: Vec<_> = tasks.iter().map(|t| t.payload.clone()).collect();
    assert_eq!(payloads, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(tasks[1].unique_key.as_deref(), Some("k-b"));
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked[0], "/tasks?max=10");
    assert_eq!(asked[1], "/tasks?max=7", "asks only for the room left");
    server.shutdown().await;
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_run_polls_a_configured_source_into_a_plugins_queue() {
    source_into_queue(|t| t.backend("memory")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_run_polls_a_configured_source_into_a_postgres_queue() {
    let pg = tokio::task::spawn_blocking(taskhost_fixtures::postgres::PostgresServer::start)
        .await
        .unwrap()
        .unwrap();
    let url = pg.url();
    source_into_queue(|t| t.backend("postgres").string("queue_url", &url)).await;
}

/// A host on the store `on` sets polls an HTTP source (three jobs, then
/// nothing) into queue `jobs`, which the archive plugin drains.
async fn source_into_queue(on: impl FnOnce(HostToml) -> HostToml) {
    let server = CountingServer::start_numbered(|n| {
        if n == 0 {
            http::Response::new(Full::new(Bytes::from_static(
                br#"["job-1", "job-2", "job-3"]"#,
            )))
        } else {
            let mut r = http::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = http::StatusCode::NO_CONTENT;
            r
        }
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let config = on(HostToml::new(&tmp.path().join("data")))
        .plugin(&support::plugin("archive"))
        .string("queue", "jobs")
        .dir(&archive, "/archive")
        .raw("pool", r#"{ max_latency = "10ms" }"#)
        .source(&support::plugin("http-source"))
        .string("queue", "jobs")
        .raw(
            "config",
            &format!("{{ url = {} }}", quoted(format!("{}/fetch", server.url()))),
        )
        .raw("allowed_hosts", &format!("[{}]", quoted(server.addr())))
        .raw(
            "poll",
            r#"{ poll_interval = "20ms", poll_interval_max = "100ms", capacity = 10 }"#,
        )
        .write(tmp.path().join("host.toml"));
    let mut child = support::host()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while support::archived(&archive).len() < 3
        || server.stats().requests.load(Ordering::Relaxed) < 3
    {
        assert!(
            std::time::Instant::now() < end,
            "the source's tasks were not archived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let got = support::archived(&archive);
    for j in ["job-1", "job-2", "job-3"] {
        assert_eq!(got.get(j), Some(&1), "{j} archived once: {got:?}");
    }
    server.shutdown().await;
}

/// A row-counting TLS server on 127.0.0.1 with a private CA made for it.
struct TlsServer {
    /// Holds `ca_file`.
    _dir: tempfile::TempDir,
    /// The CA's PEM, for clients that should trust the server.
    ca_file: PathBuf,
    /// JSON rows the server was sent.
    rows: Arc<AtomicU64>,
    server: CountingServer,
}

/// Starts a [`TlsServer`] that offers HTTP/2 or only HTTP/1.1.
async fn tls_server(http2: bool) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, tls) = loopback_tls(http2).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let rows = Arc::new(AtomicU64::new(0));
    let server = CountingServer::start_tls(counting_rows(&rows), tls)
        .await
        .unwrap();
    TlsServer {
        _dir: dir,
        ca_file,
        rows,
        server,
    }
}

/// Answers with an empty 200 and counts the JSON rows it was sent.
fn counting_rows(rows: &Arc<AtomicU64>) -> Handler {
    let seen = rows.clone();
    Arc::new(move |_, body| {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        seen.fetch_add(v.len() as u64, Ordering::Relaxed);
        http::Response::new(Full::new(Bytes::new()))
    })
}

/// Pushes `n` log rows and lets log-report ship them one request each
/// through `runtime`; returns the pool's counts.
async fn ship_rows(runtime: &Runtime, server: &CountingServer, n: usize) -> PoolSnapshot {
    let store = store();
    let url = format!("{}/report", server.url());
    let plugin = runtime
        .load(
            spec("log-report", &url, &[server.addr().to_string()]),
            store.clone(),
        )
        .unwrap();
    let queue = store.queue("logs").unwrap();
    queue
        .push_batch(
            (0..n)
                .map(|i| NewTask::new(format!(r#"{{"job":{},"line":"line {i}"}}"#, i % 7)))
                .collect(),
        )
        .await
        .unwrap();
    let cfg = PoolConfig {
        batch_size: 1,
        max_workers: 16,
        max_latency: Duration::ZERO,
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), Arc::new(plugin), cfg, clock::system()).unwrap();
    drained(&queue).await;
    pool.shutdown().await
}

/// Ships `n` rows through log-report to a TLS server that offers HTTP/2 or
/// not; every row arrives. Returns the server's (requests, HTTP/2 requests,
/// connections).
async fn ship_over_tls(n: usize, http2: bool) -> (u64, u64, u64) {
    let TlsServer {
        _dir,
        ca_file,
        rows,
        server,
    } = tls_server(http2).await;
    let runtime = runtime_trusting(8, Some(ca_file));
    let stats = ship_rows(&runtime, &server, n).await;
    assert_eq!((stats.done, stats.dead), (n as u64, 0));
    assert_eq!(rows.load(Ordering::Relaxed), n as u64);
    let s = server.stats();
    let counts = (
        s.requests.load(Ordering::Relaxed),
        s.http2.load(Ordering::Relaxed),
        s.connections.load(Ordering::Relaxed),
    );
    server.shutdown().await;
    runtime.shutdown();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_plugin_requests_are_multiplexed_over_http2_on_a_few_connections() {
    let n = 10_000;
    let (reqs, h2, conns) = ship_over_tls(n, true).await;
    assert_eq!(reqs, n as u64, "one request per batch");
    assert_eq!(h2, reqs, "every request came as HTTP/2");
    // One multiplexed connection; a second only if the first was lost.
    assert!(
        conns <= 2,
        "{reqs} HTTP/2 requests opened {conns} connections (pool 8)"
    );
    eprintln!("https + h2: {reqs} requests over {conns} connection(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http1_only_tls_server_is_served_by_pooled_keep_alive() {
    let n = 2_000;
    let (reqs, h2, conns) = ship_over_tls(n, false).await;
    assert_eq!(reqs, n as u64);
    assert_eq!(h2, 0, "the server offered only http/1.1");
    // Kept alive and reused: at most 8 at a time, and a connection the
    // server closes while idle is replaced (a busy CI machine saw 9).
    assert!(
        conns <= 2 * 8,
        "{reqs} requests opened {conns} connections (pool 8)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_plugins_request_and_the_host_carries_on() {
    // The server's CA is not given to the client: only the public roots.
    let TlsServer {
        _dir, rows, server, ..
    } = tls_server(true).await;
    let runtime = runtime(4);
    let allowed = [server.addr().to_string()];

    // What the plugin is told: the wasi:http error names the certificate.
    let source = SourcePlugin::load(
        &runtime,
        spec("http-source", &format!("{}/tasks", server.url()), &allowed),
        "jobs",
        store(),
    )
    .unwrap();
    let err = source.poll(10).await.unwrap_err();
    assert!(
        err.contains("TlsCertificateError"),
        "the plugin sees a TLS certificate error: {err}"
    );

    // A handler's task follows the plugin's outcome (log-report retries a
    // failed request) until its attempts are spent; nothing is lost.
    let store = store();
    let plugin = runtime
        .load(
            spec("log-report", &format!("{}/r", server.url()), &allowed),
            store.clone(),
        )
        .unwrap();
    let queue = store.queue("logs").unwrap();
    queue.push(NewTask::new(r#"{"line":"x"}"#)).await.unwrap();
    let cfg = PoolConfig {
        max_latency: Duration::ZERO,
        max_attempts: 2,
        retry_backoff: taskhost::backoff::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(queue.clone(), Arc::new(plugin), cfg, clock::system()).unwrap();
    drained(&queue).await;
    let stats = pool.shutdown().await;
    assert_eq!((stats.done, stats.dead), (0, 1));
    let dead = queue.dead_letters(1).await.unwrap();
    assert_eq!(dead.len(), 1, "the row is kept as a dead letter");
    assert!(
        dead[0].reason.contains("gave up after 2 attempts"),
        "{}",
        dead[0].reason
    );
    let s = server.stats();
    assert_eq!(
        s.requests.load(Ordering::Relaxed),
        0,
        "no request got through"
    );
    // The server notes a refused handshake when the client's alert arrives.
    let end = Instant::now() + Duration::from_secs(10);
    while s.tls_failures.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < end, "every try was a refused handshake");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The host is still up: the same runtime serves a plain server.
    let plain = CountingServer::start(counting_rows(&rows)).await.unwrap();
    let stats = ship_rows(&runtime, &plain, 3).await;
    assert_eq!((stats.done, stats.dead), (3, 0));
    plain.shutdown().await;
    server.shutdown().await;
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_by_the_host_and_the_task_is_done_once() {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = arrivals.clone();
    let server = CountingServer::start(Arc::new(move |_, _| {
        let mut log = log.lock().unwrap();
        log.push(Instant::now());
        if log.len() == 1 {
            too_many_requests("1")
        } else {
            http::Response::new(Full::new(Bytes::new()))
        }
    }))
    .await
    .unwrap();
    let runtime = runtime(4);
    let stats = ship_rows(&runtime, &server, 1).await;
    assert_eq!(
        (stats.done, stats.retried, stats.dead),
        (1, 0, 0),
        "the plugin saw success, once"
    );
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2, "the host retried the 429 once");
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_secs(1),
        "Retry-After: 1 was honoured: {:?}",
        arrivals[1] - arrivals[0]
    );
    assert_eq!(runtime.http().stats().retries.load(Ordering::Relaxed), 1);
    assert_eq!(runtime.http().stats().requests.load(Ordering::Relaxed), 1);
    server.shutdown().await;
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_first_https_requests_shares_one_http2_connection() {
    let TlsServer {
        _dir,
        ca_file,
        server,
        ..
    } = tls_server(true).await;
    let client = taskhost::http::HttpClient::new(HttpOptions {
        pool_idle_per_host: 64,
        host_concurrency: 64,
        ca_file: Some(ca_file),
        ..HttpOptions::default()
    })
    .unwrap();
    // 64 callers start together, before any connection exists: none of
    // them may fail, and they share the one connection that wins.
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, start, url) = (client.clone(), start.clone(), server.url());
        set.spawn(async move {
            start.wait().await;
            let req = http::Request::post(url)
                .body(Bytes::from_static(b"[1]"))
                .unwrap();
            let resp = client.send(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let s = server.stats();
    assert_eq!(s.http2.load(Ordering::Relaxed), 64);
    assert_eq!(
        s.connections.load(Ordering::Relaxed),
        1,
        "one connect, shared"
    );
    server.shutdown().await;
}

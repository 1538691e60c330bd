//! Plugins making outbound HTTP through `wasi:http` and the host's pooled
//! client, against a real server on 127.0.0.1 that counts connections.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use taskhost::clock;
use taskhost::http::HttpOptions;
use taskhost::http::server::CountingServer;
use taskhost::plugin::{Limits, PluginSpec, Runtime, RuntimeOptions};
use taskhost::pool::{PoolConfig, WorkerPool};
use taskhost::queue::memory::{MemoryOptions, MemoryStore};
use taskhost::queue::{BaseQueue, NewTask, QueueStore};
use taskhost::source::{Poller, SourceConfig, SourcePlugin};

fn spec(name: &str, url: &str, allowed: &[String]) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: support::plugin(name),
        config: [("url".to_string(), url.to_string())].into(),
        dir: None,
        limits: Limits::default(),
        allowed_hosts: allowed.to_vec(),
    }
}

fn runtime(pool: usize) -> Runtime {
    Runtime::with_options(RuntimeOptions {
        http: HttpOptions {
            pool_idle_per_host: pool,
            host_concurrency: pool,
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
    let seen = rows.clone();
    let server = CountingServer::start(Arc::new(move |_, body| {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        seen.fetch_add(v.len() as u64, Ordering::Relaxed);
        http::Response::new(Full::new(Bytes::new()))
    }))
    .await
    .unwrap();
    let runtime = runtime(8);
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
            (0..10_000)
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
    let stats = pool.shutdown().await;
    assert_eq!(stats.done, 10_000);
    assert_eq!(rows.load(Ordering::Relaxed), 10_000);
    let (reqs, conns) = (
        server.stats().requests.load(Ordering::Relaxed),
        server.stats().connections.load(Ordering::Relaxed),
    );
    assert_eq!(reqs, 10_000, "one request per batch");
    assert!(
        conns <= 8,
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
    pool.shutdown().await;
    assert_eq!(runtime.http().stats().refused.load(Ordering::Relaxed), 1);
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
    let polls = Arc::new(AtomicU64::new(0));
    let seen = polls.clone();
    let server = CountingServer::start(Arc::new(move |_, _| {
        if seen.fetch_add(1, Ordering::Relaxed) == 0 {
            http::Response::new(Full::new(Bytes::from_static(
                br#"["job-1", "job-2", "job-3"]"#,
            )))
        } else {
            let mut r = http::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = http::StatusCode::NO_CONTENT;
            r
        }
    }))
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let config = tmp.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"
backend = "memory"
data_dir = "{data}"
[[plugins]]
path = "{archive_wasm}"
queue = "jobs"
dir = {{ host = "{archive}", guest = "/archive" }}
pool = {{ max_latency = "10ms" }}
[[sources]]
path = "{source_wasm}"
queue = "jobs"
config = {{ url = "{url}/fetch" }}
allowed_hosts = ["{addr}"]
poll = {{ poll_interval = "20ms", poll_interval_max = "100ms", capacity = 10 }}
"#,
            archive_wasm = support::plugin("archive").display(),
            source_wasm = support::plugin("http-source").display(),
            archive = archive.display(),
            data = tmp.path().join("data").display(),
            url = server.url(),
            addr = server.addr(),
        ),
    )
    .unwrap();
    let mut child = support::host()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while support::archived(&archive).len() < 3 || polls.load(Ordering::Relaxed) < 3 {
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

//! Producer API over loopback: NDJSON batches of 1,000 tasks of 100 bytes
//! POSTed to `/v1/queues/bench/tasks` of an in-process listener, on the
//! disk and Redis backends. Prints tasks/s per backend.
//! Target (issue 16): at least 100,000 tasks/s.
//!
//! `cargo bench -p taskhost --bench api_push -- --batches 200 --concurrency 4`
//! (options: `--batches N` default 200, `--batch N` default 1,000,
//! `--concurrency N` default 4, `--cases disk,redis`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use taskhost::api::{ApiConfig, ApiServer};
use taskhost::clock;
use taskhost::metrics::Metrics;
use taskhost::queue::{self, BackendConfig, QueueStore};
use taskhost_fixtures::redis::RedisServer;

mod common;

/// Options of the push API benchmark.
#[derive(Debug, clap::Args)]
struct Opts {
    /// Requests to send per backend.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Tasks per request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Backends to measure, comma-separated: disk, redis.
    #[arg(long, default_value = "disk,redis")]
    cases: String,
}

fn main() -> std::process::ExitCode {
    common::main(|o: Opts| async move {
        if o.batches == 0 || o.batch == 0 || o.concurrency == 0 {
            bail!("--batches, --batch and --concurrency must be at least 1");
        }
        run(o).await
    })
}

async fn run(o: Opts) -> Result<()> {
    // One NDJSON body, sent again and again: 100-byte payloads.
    let line = format!("{{\"payload\":\"{}\"}}\n", "x".repeat(100));
    let body = Bytes::from(line.repeat(o.batch));
    println!(
        "push API: {} requests x {} tasks of 100 bytes ({} KiB NDJSON each), {} in flight",
        o.batches,
        o.batch,
        body.len() / 1024,
        o.concurrency
    );
    for case in o.cases.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (_redis, backend, dir) = match case {
            "disk" => {
                let dir = common::tempdir()?.join("api-disk");
                let cfg = BackendConfig::Disk {
                    data_dir: dir.clone(),
                    options: Default::default(),
                };
                (None, cfg, Some(dir))
            }
            "redis" => {
                let server = RedisServer::start()?;
                let cfg = BackendConfig::Redis {
                    url: server.url(),
                    options: Default::default(),
                };
                (Some(server), cfg, None)
            }
            other => bail!("unknown case {other:?} (disk, redis)"),
        };
        let store = queue::open(&backend, clock::system())?;
        let rate = measure(&o, store.clone(), body.clone()).await;
        store.close().await;
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let rate = rate.with_context(|| format!("case {case}"))?;
        println!("  {case:<6} {rate:>10.0} tasks/s");
    }
    Ok(())
}

async fn measure(o: &Opts, store: Arc<dyn QueueStore>, body: Bytes) -> Result<f64> {
    let cfg = ApiConfig::default();
    let metrics = Metrics::new(store.clone());
    let server = ApiServer::start(&cfg, "127.0.0.1:0", store.clone(), metrics).await?;
    let uri: hyper::Uri = format!("http://{}/v1/queues/bench/tasks", server.addr()).parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..o.concurrency {
        let (client, uri, body, next) = (client.clone(), uri.clone(), body.clone(), next.clone());
        let total = o.batches;
        senders.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let req = hyper::Request::post(uri.clone())
                    .header("content-type", "application/x-ndjson")
                    .body(Full::new(body.clone()))?;
                let resp = client.request(req).await?;
                let status = resp.status();
                let answer = resp.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    bail!("{status}: {}", String::from_utf8_lossy(&answer));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    server.shutdown().await;
    let stats = store.queue("bench")?.stats().await?;
    let pushed = (o.batches * o.batch) as u64;
    if stats.pending != pushed {
        bail!("{} tasks pending after pushing {pushed}", stats.pending);
    }
    Ok(pushed as f64 / elapsed.as_secs_f64())
}

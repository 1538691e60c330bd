//! act_runner's load table (gitea/act_runner PR 819),
//! measured against a local HTTP server standing in for Gitea.
//!
//! Both designs run the same fleet for the same time: `runners` runners with
//! `tasks` running tasks each; `logging` of the tasks print log lines in
//! bursts (mean gap `burst_gap`, ~20 lines, 1 in 20 bursts 300 lines, like
//! an `npm install`), every task changes step every 20-60 s, and no new job
//! is ever queued (the idle-polling case of the table).
//!
//! (a) naive: every task reports its log and its state every 1 s, whether or
//! not anything changed; every runner polls every 2 s.
//! (b) taskhost: each runner's log lines and step changes are tasks on one
//! queue drained by a worker pool with act_runner's triggers (100 rows, 2.8 s
//! max latency so rows arrive within 3 s, 5 s sweep; a step change is urgent) and shipped in one POST
//! per flushed batch through the pooled client; each runner polls through a
//! `source` poller with back-off (2 s doubling to 60 s, +-20 %).
//!
//! The server classifies requests (GET /fetch: polling; POST /report holding
//! a state row: state; else log) and measures each log row's delay from its
//! creation to its arrival.
//!
//! `cargo bench -p taskhost --bench runner_load -- [OPTIONS]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use taskhost::clock;
use taskhost::http::{HttpClient, HttpOptions};
use taskhost::pool::{BatchError, BatchHandler, Outcome, PoolConfig, WorkerPool};
use taskhost::queue::memory::{MemoryOptions, MemoryQueue};
use taskhost::queue::{BaseQueue, NewTask, Task};
use taskhost::source::{Poller, Source, SourceConfig};
use taskhost_fixtures::http::{CountingServer, Handler};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod common;

fn main() -> ExitCode {
    common::main(bench_load)
}

/// Options of the runner-load bench.
#[derive(Debug, Args)]
struct LoadArgs {
    /// Runners in the fleet.
    #[arg(long, default_value_t = 200)]
    runners: usize,
    /// Running tasks per runner.
    #[arg(long, default_value_t = 3)]
    tasks: usize,
    /// Fraction of tasks that print log lines.
    #[arg(long, default_value_t = 0.7)]
    logging: f64,
    /// Mean time between two bursts of log lines of one task.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    burst_gap: Duration,
    /// How long each design is measured (real time).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each design runs before measuring starts (lets polling
    /// back-off reach steady state, as act_runner's table assumes).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the stand-in server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Off during the warm-up.
    counting: std::sync::atomic::AtomicBool,
    polls: AtomicU64,
    logs: AtomicU64,
    states: AtomicU64,
    rows: AtomicU64,
    delays_ms: Mutex<Vec<u64>>,
}

fn gitea(seen: Arc<Seen>) -> Handler {
    Arc::new(move |parts, body| {
        let arrived = now_ms();
        let mut resp = http::Response::new(Full::new(Bytes::new()));
        if parts.uri.path() == "/fetch" {
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            if seen.counting.load(Ordering::Relaxed) {
                seen.polls.fetch_add(1, Ordering::Relaxed);
            }
            return resp;
        }
        if !seen.counting.load(Ordering::Relaxed) {
            return resp;
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        let mut state = false;
        let mut delays = Vec::new();
        for r in &rows {
            match r.get("kind").and_then(|k| k.as_str()) {
                Some("state") => state = true,
                Some("log") => {
                    let t = r.get("t").and_then(|t| t.as_u64()).unwrap_or(arrived);
                    delays.push(arrived.saturating_sub(t));
                }
                _ => {}
            }
        }
        seen.rows.fetch_add(delays.len() as u64, Ordering::Relaxed);
        if !delays.is_empty() {
            seen.delays_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(delays);
        }
        let counter = if state || parts.uri.path() == "/state" {
            &seen.states
        } else {
            &seen.logs
        };
        counter.fetch_add(1, Ordering::Relaxed);
        resp
    })
}

fn row(kind: &str, job: usize, text: &str) -> String {
    serde_json::json!({"kind": kind, "job": job, "t": now_ms(), "line": text}).to_string()
}

/// Whether a task prints logs: the same tasks in both designs, spread over runners.
fn logs(job: usize, fraction: f64) -> bool {
    fastrand::Rng::with_seed(job as u64).f64() < fraction
}

/// Where a simulated task puts what it produces.
#[async_trait]
trait Sink: Send + Sync + 'static {
    async fn lines(&self, job: usize, n: usize);
    async fn step(&self, job: usize, step: u32);
}

/// Drives one task: bursts of log lines (if it logs) and step changes.
async fn simulate_task(
    sink: Arc<dyn Sink>,
    job: usize,
    logs: bool,
    gap: Duration,
    stop: CancellationToken,
) {
    let mut next_burst = tokio::time::Instant::now() + gap.mul_f64(fastrand::f64() * 2.0);
    let mut step = 0u32;
    let mut next_step = tokio::time::Instant::now() + Duration::from_secs(fastrand::u64(20..=60));
    loop {
        let at = if logs {
            next_burst.min(next_step)
        } else {
            next_step
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        if logs && now >= next_burst {
            let n = if fastrand::u32(0..20) == 0 {
                300
            } else {
                fastrand::usize(5..=35)
            };
            sink.lines(job, n).await;
            // Exponential gaps: bursts come at random, mean `gap`.
            next_burst = now + gap.mul_f64(-(1.0 - fastrand::f64()).ln());
        }
        if now >= next_step {
            step += 1;
            sink.step(job, step).await;
            next_step = now + Duration::from_secs(fastrand::u64(20..=60));
        }
    }
}

async fn post(client: &HttpClient, url: &str, body: String) -> Result<(), String> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .map_err(|e| e.to_string())?;
    let resp = client.send(req).await.map_err(|e| format!("{e:?}"))?;
    let ok = resp.status().is_success();
    let _ = resp.into_body().collect().await;
    if ok {
        Ok(())
    } else {
        Err("server refused".into())
    }
}

/// (a): per-task buffers reported every second, whatever they hold.
#[derive(Default)]
struct NaiveTask {
    rows: Mutex<Vec<String>>,
}

struct NaiveSink(Vec<Arc<NaiveTask>>);

#[async_trait]
impl Sink for NaiveSink {
    async fn lines(&self, job: usize, n: usize) {
        let t = &self.0[job];
        let mut rows = t.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.extend((0..n).map(|i| row("log", job, &format!("line {i}"))));
    }
    async fn step(&self, _job: usize, _step: u32) {}
}

/// Lets the warm-up pass, then counts for `duration`.
async fn measure(a: &LoadArgs, seen: &Seen) {
    tokio::time::sleep(a.warmup).await;
    seen.counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(a.duration).await;
    seen.counting.store(false, Ordering::Relaxed);
}

async fn naive(a: &LoadArgs, base: &str, client: Arc<HttpClient>, seen: &Seen) -> Result<()> {
    let stop = CancellationToken::new();
    let mut set = JoinSet::new();
    let jobs = a.runners * a.tasks;
    let tasks: Vec<Arc<NaiveTask>> = (0..jobs).map(|_| Arc::default()).collect();
    let sink: Arc<dyn Sink> = Arc::new(NaiveSink(tasks.clone()));
    for r in 0..a.runners {
        let (c, st, url) = (client.clone(), stop.clone(), format!("{base}/fetch"));
        set.spawn(async move {
            let (client, stop) = (c, st);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_millis(fastrand::u64(0..2_000)),
                Duration::from_secs(2),
            );
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                let req = http::Request::get(&url)
                    .body(Bytes::new())
                    .unwrap_or_default();
                if let Ok(resp) = client.send(req).await {
                    let _ = resp.into_body().collect().await;
                }
            }
        });
        for k in 0..a.tasks {
            let job = r * a.tasks + k;
            let logs = logs(job, a.logging);
            set.spawn(simulate_task(
                sink.clone(),
                job,
                logs,
                a.burst_gap,
                stop.clone(),
            ));
            let (client, stop, task) = (client.clone(), stop.clone(), tasks[job].clone());
            let base = base.to_owned();
            set.spawn(async move {
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis(fastrand::u64(0..1_000)),
                    Duration::from_secs(1),
                );
                loop {
                    tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                    let rows =
                        std::mem::take(&mut *task.rows.lock().unwrap_or_else(|p| p.into_inner()));
                    let _ = post(
                        &client,
                        &format!("{base}/log"),
                        format!("[{}]", rows.join(",")),
                    )
                    .await;
                    let _ = post(
                        &client,
                        &format!("{base}/state"),
                        format!("[{}]", row("state", job, "running")),
                    )
                    .await;
                }
            });
        }
    }
    measure(a, seen).await;
    stop.cancel();
    while set.join_next().await.is_some() {}
    Ok(())
}

/// (b): the log-report handler: one POST per flushed batch.
struct Shipper {
    client: Arc<HttpClient>,
    url: String,
}

#[async_trait]
impl BatchHandler for Shipper {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let mut body =
            Vec::with_capacity(batch.iter().map(|t| t.payload.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, t) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&t.payload);
        }
        body.push(b']');
        let body = String::from_utf8(body).map_err(|e| BatchError(e.to_string()))?;
        match post(&self.client, &self.url, body).await {
            Ok(()) => Ok(vec![Outcome::Done; batch.len()]),
            Err(e) => Err(BatchError(e)),
        }
    }
}

struct QueueSink {
    queues: Vec<Arc<dyn BaseQueue>>,
    tasks: usize,
}

#[async_trait]
impl Sink for QueueSink {
    async fn lines(&self, job: usize, n: usize) {
        let q = &self.queues[job / self.tasks];
        let rows: Vec<NewTask> = (0..n)
            .map(|i| NewTask::new(row("log", job, &format!("line {i}"))))
            .collect();
        if let Err(e) = q.push_batch(rows).await {
            tracing::error!(error = %e, "pushing log rows failed");
        }
    }
    async fn step(&self, job: usize, step: u32) {
        let q = &self.queues[job / self.tasks];
        let t = NewTask {
            unique_key: Some(format!("urgent:{job}:{step}")),
            ..NewTask::new(row("state", job, &format!("step {step}")))
        };
        if let Err(e) = q.push(t).await {
            tracing::error!(error = %e, "pushing a state row failed");
        }
    }
}

/// Polls the stand-in's fetch endpoint; it never has a job.
struct FetchSource {
    client: Arc<HttpClient>,
    url: String,
}

#[async_trait]
impl Source for FetchSource {
    async fn poll(&self, _max: usize) -> Result<Vec<NewTask>, String> {
        let req = http::Request::get(&self.url)
            .body(Bytes::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.send(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == http::StatusCode::NO_CONTENT || body.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![NewTask::new(body.to_vec())])
    }
}

async fn taskhost(a: &LoadArgs, base: &str, client: Arc<HttpClient>, seen: &Seen) -> Result<()> {
    let stop = CancellationToken::new();
    let clock = clock::system();
    let mut pools = Vec::new();
    let mut pollers = Vec::new();
    let mut queues: Vec<Arc<dyn BaseQueue>> = Vec::new();
    let cfg = PoolConfig {
        batch_size: 100,
        // 200 ms below act_runner's 3 s leaves room for the POST itself, so
        // a row *arrives* within 3 s.
        max_latency: Duration::from_millis(2_800),
        interval: Some(Duration::from_secs(5)),
        urgent_key_prefix: Some("urgent:".into()),
        max_workers: 1,
        ..PoolConfig::default()
    };
    let memory_queue = |name: String| -> Result<Arc<dyn BaseQueue>> {
        Ok(Arc::new(MemoryQueue::new(
            &name,
            MemoryOptions::default(),
            clock.clone(),
        )?))
    };
    for r in 0..a.runners {
        let q = memory_queue(format!("log-{r}"))?;
        let handler = Arc::new(Shipper {
            client: client.clone(),
            url: format!("{base}/report"),
        });
        pools.push(
            WorkerPool::start(q.clone(), handler, cfg.clone(), clock.clone())
                .map_err(anyhow::Error::msg)?,
        );
        queues.push(q);
        let jobs = memory_queue(format!("jobs-{r}"))?;
        let source = Arc::new(FetchSource {
            client: client.clone(),
            url: format!("{base}/fetch"),
        });
        pollers.push(
            Poller::start(source, jobs, SourceConfig::default()).map_err(anyhow::Error::msg)?,
        );
    }
    let jobs = a.runners * a.tasks;
    let sink: Arc<dyn Sink> = Arc::new(QueueSink {
        queues,
        tasks: a.tasks,
    });
    let mut set = JoinSet::new();
    for job in 0..jobs {
        set.spawn(simulate_task(
            sink.clone(),
            job,
            logs(job, a.logging),
            a.burst_gap,
            stop.clone(),
        ));
    }
    measure(a, seen).await;
    stop.cancel();
    while set.join_next().await.is_some() {}
    for p in pollers {
        p.shutdown().await;
    }
    for p in pools {
        p.shutdown().await;
    }
    Ok(())
}

struct Figures {
    polling: f64,
    log: f64,
    state: f64,
    p50: u64,
    p99: u64,
    max: u64,
    rows: u64,
}

fn figures(seen: &Seen, secs: f64) -> Figures {
    let mut d = std::mem::take(&mut *seen.delays_ms.lock().unwrap_or_else(|p| p.into_inner()));
    d.sort_unstable();
    let pct = |p: f64| {
        d.get(((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Figures {
        polling: seen.polls.load(Ordering::Relaxed) as f64 / secs,
        log: seen.logs.load(Ordering::Relaxed) as f64 / secs,
        state: seen.states.load(Ordering::Relaxed) as f64 / secs,
        p50: pct(0.5),
        p99: pct(0.99),
        max: d.last().copied().unwrap_or(0),
        rows: seen.rows.load(Ordering::Relaxed),
    }
}

/// Runs both designs and prints act_runner's table.
async fn bench_load(a: LoadArgs) -> Result<()> {
    anyhow::ensure!(
        a.runners > 0 && a.tasks > 0,
        "--runners and --tasks must be at least 1"
    );
    let secs = a.duration.as_secs_f64();
    let opts = HttpOptions {
        host_concurrency: 256,
        pool_idle_per_host: 256,
        ..HttpOptions::default()
    };
    let mut out = Vec::new();
    for design in ["naive", "taskhost"] {
        let seen = Arc::new(Seen::default());
        let server = CountingServer::start(gitea(seen.clone()))
            .await
            .context("starting the stand-in server")?;
        let client = HttpClient::new(opts.clone()).context("starting the HTTP client")?;
        eprintln!(
            "running {design}: {:?} warm-up, then {:?} measured ...",
            a.warmup, a.duration
        );
        if design == "naive" {
            naive(&a, &server.url(), client, &seen).await?;
        } else {
            taskhost(&a, &server.url(), client, &seen).await?;
        }
        let conns = server.stats().connections.load(Ordering::Relaxed);
        server.shutdown().await;
        let f = figures(&seen, secs);
        eprintln!(
            "  {design}: {} log rows delivered over {conns} connections",
            f.rows
        );
        out.push(f);
    }
    let (b, t) = (&out[0], &out[1]);
    let red = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:.0} %", 100.0 * (1.0 - y / x))
        } else {
            "-".into()
        }
    };
    println!(
        "{} runners x {} tasks, {:.0} % logging (bursts: mean gap {:?}, ~20 lines, 1 in 20 of 300 lines), steps every 20-60 s, {:?} measured after {:?} warm-up (real time)",
        a.runners,
        a.tasks,
        a.logging * 100.0,
        a.burst_gap,
        a.duration,
        a.warmup
    );
    println!();
    println!("| Component | Before (naive) | After (taskhost) | Reduction |");
    println!("|---|---|---|---|");
    for (name, x, y) in [
        ("Polling (idle)", b.polling, t.polling),
        ("Log reporting", b.log, t.log),
        ("State reporting", b.state, t.state),
    ] {
        println!("| {name} | {x:.1} req/s | {y:.1} req/s | {} |", red(x, y));
    }
    let (bt, tt) = (b.polling + b.log + b.state, t.polling + t.log + t.state);
    println!(
        "| **Total** | **{bt:.1} req/s** | **{tt:.1} req/s** | **{}** |",
        red(bt, tt)
    );
    println!();
    println!("| Log line delay (creation to arrival) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| Before (naive) | {} ms | {} ms | {} ms |",
        b.p50, b.p99, b.max
    );
    println!(
        "| After (taskhost) | {} ms | {} ms | {} ms |",
        t.p50, t.p99, t.max
    );
    Ok(())
}

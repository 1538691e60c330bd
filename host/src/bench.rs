//! `host bench`: throughput of memory and disk queues with a native and a
//! WASM no-op handler, and resident memory under a large throttled backlog.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use clap::Args;
use taskhost::clock::{self, Clock};
use taskhost::plugin::{Limits, PluginSpec, Runtime};
use taskhost::pool::{BatchError, BatchHandler, NoopHandler, Outcome, PoolConfig, WorkerPool};
use taskhost::queue::disk::{DiskOptions, DiskStore};
use taskhost::queue::memory::{MemoryOptions, MemoryStore};
use taskhost::queue::{NewTask, QueueStore, Task};

/// Options of `host bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// No-op handler component (the testkit plugin in its default mode).
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/plugin/testkit.wasm")]
    plugin: PathBuf,
    /// Tasks per throughput run on the memory backend.
    #[arg(long, default_value_t = 1_000_000)]
    memory_tasks: usize,
    /// Tasks per throughput run on the disk backend.
    #[arg(long, default_value_t = 200_000)]
    disk_tasks: usize,
    /// Tasks per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Workers per pool.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Backlog for the memory-footprint run (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    rss_backlog: usize,
    /// Runs of each throughput case; the median is printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Throughput cases to run, as BACKEND-HANDLER.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory-native,memory-wasm,disk-native,disk-wasm"
    )]
    cases: Vec<String>,
    /// How long the throttled handler runs in the footprint run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    rss_time: Duration,
}

/// Lets through at most `rate` tasks per second, then calls the inner handler.
struct Throttled<H> {
    inner: H,
    per_task: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

#[async_trait]
impl<H: BatchHandler> BatchHandler for Throttled<H> {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let slot = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + self.per_task * batch.len() as u32;
            start
        };
        tokio::time::sleep_until(slot).await;
        self.inner.handle(batch).await
    }
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

pub async fn bench(a: BenchArgs) -> Result<()> {
    let runtime = Runtime::new()?;
    let clock = clock::system();
    let tmp = tempdir()?;
    println!(
        "taskhost bench: batch {}, {} workers, {} cores",
        a.batch_size,
        a.workers,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("wasm plugin: {}", a.plugin.display());
    call_overhead(&a, &runtime, clock.clone()).await?;
    if a.rss_backlog > 0 {
        footprint(&a, &runtime, clock.clone(), &tmp.join("rss")).await?;
    }
    println!();
    println!(
        "{:<8} {:<8} {:>10} {:>14} {:>14}   (median of {} runs)",
        "backend", "handler", "tasks", "end-to-end/s", "drain/s", a.repeat
    );
    let mut native_mem = None;
    for case in &a.cases {
        let Some((backend, handler_kind)) = case.split_once('-') else {
            anyhow::bail!("bench case {case:?}: expected BACKEND-HANDLER, e.g. memory-wasm");
        };
        let n = match backend {
            "memory" => a.memory_tasks,
            "disk" => a.disk_tasks,
            other => anyhow::bail!("bench case {case:?}: unknown backend {other:?}"),
        };
        let mut runs = Vec::new();
        for run in 0..a.repeat.max(1) {
            let dir = tmp.join(format!("{case}-{run}"));
            let case = Case {
                backend,
                handler_kind,
                n,
                dir: &dir,
            };
            runs.push(throughput_case(&a, &runtime, clock.clone(), case).await?);
            let _ = std::fs::remove_dir_all(&dir);
        }
        runs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (e2e, drain) = runs[runs.len() / 2];
        let ratio = match (backend, handler_kind, native_mem) {
            ("memory", "native", _) => {
                native_mem = Some(e2e);
                String::new()
            }
            ("memory", _, Some(native)) => format!("  ({:.2} of native)", e2e / native),
            _ => String::new(),
        };
        println!("{backend:<8} {handler_kind:<8} {n:>10} {e2e:>14.0} {drain:>14.0}{ratio}");
    }
    runtime.shutdown();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Time per `handle` call of the no-op component, instance creation included.
async fn call_overhead(a: &BenchArgs, runtime: &Runtime, clock: Arc<dyn Clock>) -> Result<()> {
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new(MemoryOptions::default(), clock));
    let t = Instant::now();
    let plugin = load_noop(runtime, &a.plugin, store)?;
    let load = t.elapsed();
    println!("wasm no-op plugin: load (read + compile + link) {load:.2?}");
    for size in [1usize, 100] {
        let batch: Vec<Task> = (0..size as u64)
            .map(|id| Task {
                id,
                queue: "bench".into(),
                unique_key: None,
                payload: vec![b'x'; 100],
                attempt: 1,
                enqueued_at_ms: 0,
            })
            .collect();
        let calls = 20_000 / size.max(1) * 10;
        let t = Instant::now();
        for _ in 0..calls {
            plugin.call(&batch).await.map_err(anyhow::Error::msg)?;
        }
        let per_call = t.elapsed() / calls as u32;
        println!(
            "  batch of {size:>3}: {per_call:.2?} per call (fresh instance + handle), {:.0} ns per task",
            per_call.as_nanos() as f64 / size as f64
        );
    }
    Ok(())
}

/// One throughput configuration.
struct Case<'a> {
    backend: &'a str,
    handler_kind: &'a str,
    n: usize,
    dir: &'a std::path::Path,
}

/// One throughput run of a backend with a handler kind, in a fresh store.
async fn throughput_case(
    a: &BenchArgs,
    runtime: &Runtime,
    clock: Arc<dyn Clock>,
    case: Case<'_>,
) -> Result<(f64, f64)> {
    let mut disk = None;
    let store: Arc<dyn QueueStore> = if case.backend == "memory" {
        let opts = MemoryOptions {
            capacity: case.n.max(1),
            ..MemoryOptions::default()
        };
        Arc::new(MemoryStore::new(opts, clock.clone()))
    } else {
        let d = DiskStore::open(case.dir, DiskOptions::default(), clock.clone())?;
        disk = Some(d.clone());
        Arc::new(d)
    };
    let handler: Arc<dyn BatchHandler> = match case.handler_kind {
        "native" => Arc::new(NoopHandler),
        "wasm" => Arc::new(load_noop(runtime, &a.plugin, store.clone())?),
        other => anyhow::bail!("unknown handler kind {other:?} (native or wasm)"),
    };
    let result = throughput(a, store, handler, case.n, clock).await;
    if let Some(d) = disk {
        d.close().await;
    }
    result
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("taskhost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn load_noop(
    runtime: &Runtime,
    path: &std::path::Path,
    store: Arc<dyn QueueStore>,
) -> Result<taskhost::plugin::Plugin> {
    let spec = PluginSpec {
        name: "noop".into(),
        path: path.to_owned(),
        config: [("mode".to_string(), "noop".to_string())].into(),
        dir: None,
        limits: Limits::default(),
        allowed_hosts: Vec::new(),
    };
    runtime
        .load(spec, store)
        .with_context(|| "loading the no-op plugin (build it: cargo build --profile plugin --target wasm32-wasip2 --target-dir target/wasm -p testkit)")
}

/// Pushes `n` tasks while a pool drains them; returns (end-to-end, drain) tasks/s.
async fn throughput(
    a: &BenchArgs,
    store: Arc<dyn QueueStore>,
    handler: Arc<dyn BatchHandler>,
    n: usize,
    clock: Arc<dyn Clock>,
) -> Result<(f64, f64)> {
    let queue = store.queue("bench")?;
    let cfg = PoolConfig {
        batch_size: a.batch_size,
        max_workers: a.workers,
        max_latency: Duration::from_millis(1),
        ..PoolConfig::default()
    };
    let start = Instant::now();
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock).map_err(anyhow::Error::msg)?;
    let stats = pool.stats();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let payload = vec![b'x'; 100];
            let mut pushed = 0;
            while pushed < n {
                let k = (n - pushed).min(1_000);
                let tasks = (0..k).map(|_| NewTask::new(payload.clone())).collect();
                queue.push_batch(tasks).await?;
                pushed += k;
            }
            anyhow::Ok(())
        })
    };
    producer.await.context("producer task")??;
    let pushed_at = start.elapsed();
    let done_at_push = stats.done.load(Ordering::Relaxed);
    while (stats.done.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = start.elapsed();
    pool.shutdown().await;
    let drain_secs = (total - pushed_at).as_secs_f64();
    let drain = if drain_secs > 0.0 {
        (n as u64 - done_at_push) as f64 / drain_secs
    } else {
        f64::NAN
    };
    Ok((n as f64 / total.as_secs_f64(), drain))
}

/// Resident memory with a small and a large backlog behind a 100 tasks/s handler.
async fn footprint(
    a: &BenchArgs,
    runtime: &Runtime,
    clock: Arc<dyn Clock>,
    dir: &std::path::Path,
) -> Result<()> {
    let disk = DiskStore::open(dir, DiskOptions::default(), clock.clone())?;
    let store: Arc<dyn QueueStore> = Arc::new(disk.clone());
    let queue = store.queue("backlog")?;
    let plugin = load_noop(runtime, &a.plugin, store.clone())?;
    println!("memory footprint, disk backend, wasm no-op handler throttled to 100 tasks/s:");
    println!("  RSS before any task: {}", mib(rss_kib("VmRSS:")));
    let mut backlog = 0usize;
    for target in [10_000usize, a.rss_backlog] {
        let t = Instant::now();
        let payload = vec![b'x'; 100];
        while backlog < target {
            let k = (target - backlog).min(10_000);
            queue
                .push_batch((0..k).map(|_| NewTask::new(payload.clone())).collect())
                .await?;
            backlog += k;
        }
        let push_secs = t.elapsed().as_secs_f64();
        let handler = Arc::new(Throttled {
            inner: load_noop(runtime, &a.plugin, store.clone())?,
            per_task: Duration::from_millis(10),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        });
        let cfg = PoolConfig {
            batch_size: a.batch_size,
            max_workers: 4,
            ..PoolConfig::default()
        };
        let pool = WorkerPool::start(queue.clone(), handler, cfg, clock.clone())
            .map_err(anyhow::Error::msg)?;
        let mut peak = 0;
        let end = Instant::now() + a.rss_time;
        while Instant::now() < end {
            peak = peak.max(rss_kib("VmRSS:").unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Tasks done within the window; batches still sleeping in the
        // throttle finish during shutdown and count towards the backlog only.
        let done = pool.stats().snapshot().done;
        let total = pool.shutdown().await.done;
        backlog -= total as usize;
        println!(
            "  backlog {:>9} (pushed in {:.1}s): peak RSS while draining {} ({} tasks done in {:?})",
            target,
            push_secs,
            mib(Some(peak)),
            done,
            a.rss_time
        );
    }
    println!(
        "  process peak RSS (VmHWM) so far: {}",
        mib(rss_kib("VmHWM:"))
    );
    drop(plugin);
    disk.close().await;
    Ok(())
}

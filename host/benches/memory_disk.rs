//! Throughput of memory and disk queues with a native and a WASM no-op
//! handler, the plugin call overhead, start-up times, hostile neighbours, and
//! resident memory under a large throttled backlog.
//!
//! `cargo bench -p taskhost --bench memory_disk -- [OPTIONS]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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

mod common;
use common::{PoolShape, load_noop, synthetic_batch, tempdir, throughput};

fn main() -> ExitCode {
    common::main(bench)
}

/// Options of the memory and disk bench.
#[derive(Debug, Args)]
struct BenchArgs {
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
    /// Tasks for the healthy queue in the hostile-neighbour run (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    hostile_tasks: usize,
    /// How long the throttled handler runs in the footprint run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    rss_time: Duration,
}

impl BenchArgs {
    fn shape(&self) -> PoolShape {
        PoolShape {
            batch_size: self.batch_size,
            workers: self.workers,
        }
    }
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

async fn bench(a: BenchArgs) -> Result<()> {
    let runtime = Runtime::new()?;
    let clock = clock::system();
    let tmp = tempdir()?;
    println!(
        "taskhost bench memory_disk: batch {}, {} workers, {} cores",
        a.batch_size,
        a.workers,
        common::cores()
    );
    println!("wasm plugin: {}", a.plugin.display());
    // Footprint first: the later phases grow the heap and would blur it.
    if a.rss_backlog > 0 {
        footprint(&a, &runtime, clock.clone(), &tmp.join("rss")).await?;
    }
    call_overhead(&a, &runtime, clock.clone()).await?;
    startup(&a, &tmp.join("startup")).await?;
    if a.hostile_tasks > 0 {
        hostile_neighbours(&a, &runtime, clock.clone()).await?;
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
    let rounds = 200_000u32;
    let t = Instant::now();
    for _ in 0..rounds {
        plugin
            .instantiate_only()
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let instance = t.elapsed() / rounds;
    println!("  fresh instance (store + instantiate + drop, no call): {instance:.2?}");
    let mut per_call = Vec::new();
    for size in [1usize, 100] {
        let batch = synthetic_batch(size);
        let calls = 20_000 / size.max(1) * 10;
        let t = Instant::now();
        for _ in 0..calls {
            plugin.call(&batch).await.map_err(anyhow::Error::msg)?;
        }
        let call = t.elapsed() / calls as u32;
        per_call.push(call);
        println!(
            "  batch of {size:>3}: {call:.2?} per call (fresh instance + handle), {:.0} ns per task, call without the instance {:.0} ns per task",
            call.as_nanos() as f64 / size as f64,
            call.saturating_sub(instance).as_nanos() as f64 / size as f64
        );
    }
    if let [one, hundred] = per_call[..] {
        println!(
            "  each task beyond the first in a batch of 100: {:.0} ns (lowering into the guest, guest work, outcome)",
            hundred.saturating_sub(one).as_nanos() as f64 / 99.0
        );
    }
    Ok(())
}

/// Compile vs cached load, and a restart of the real binary with a warm cache.
async fn startup(a: &BenchArgs, dir: &std::path::Path) -> Result<()> {
    let cache = dir.join("cache");
    let store: Arc<dyn QueueStore> =
        Arc::new(MemoryStore::new(MemoryOptions::default(), clock::system()));
    let opts = || taskhost::plugin::RuntimeOptions {
        cache_dir: Some(cache.clone()),
        ..Default::default()
    };
    let mut loads = Vec::new();
    for _ in 0..2 {
        let rt = Runtime::with_options(opts())?;
        let t = Instant::now();
        let p = load_noop(&rt, &a.plugin, store.clone())?;
        loads.push((t.elapsed(), p.source()));
        rt.shutdown();
    }
    println!(
        "  compile {:.2?} ({:?}); cached load in a new engine {:.2?} ({:?})",
        loads[0].0, loads[0].1, loads[1].0, loads[1].1
    );
    // A restart of the real binary: process start, open the queue, load the
    // plugin from the warm cache, handle one task, shut down.
    let exe = env!("CARGO_BIN_EXE_host");
    let mut times = Vec::new();
    for run in 0..4 {
        let t = Instant::now();
        let out = tokio::process::Command::new(exe)
            .arg("run")
            .arg("--plugin")
            .arg(&a.plugin)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--set",
                "mode=noop",
                "--sample-tasks",
                "1",
                "--exit-when-drained",
                "--no-watch",
            ])
            .env("TASKHOST_LOG", "warn")
            .output()
            .await
            .context("running the host binary")?;
        if !out.status.success() {
            anyhow::bail!("host run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if run > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    println!(
        "  restart with a warm cache, process start to one task handled and exit: {:.0?} (median of {})",
        times[times.len() / 2],
        times.len()
    );
    Ok(())
}

/// Healthy-queue throughput alone, then beside trapping, looping and
/// memory-bombing plugins fed all the time.
async fn hostile_neighbours(a: &BenchArgs, runtime: &Runtime, clock: Arc<dyn Clock>) -> Result<()> {
    let n = a.hostile_tasks;
    let mut rates = Vec::new();
    for with_hostile in [false, true] {
        let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new(
            MemoryOptions {
                capacity: n.max(1) * 2,
                ..MemoryOptions::default()
            },
            clock.clone(),
        ));
        let mut hostile = Vec::new();
        if with_hostile {
            for mode in ["trap", "loop", "grow"] {
                let q = store.queue(mode)?;
                q.push_batch((0..10_000).map(|_| NewTask::new("x")).collect())
                    .await?;
                let spec = PluginSpec {
                    name: format!("hostile-{mode}"),
                    path: a.plugin.clone(),
                    config: [("mode".to_string(), mode.to_string())].into(),
                    dir: None,
                    limits: Limits {
                        memory_mib: 16,
                        time: Duration::from_millis(100),
                        ..Limits::default()
                    },
                    allowed_hosts: Vec::new(),
                    enqueue_to: None,
                };
                let plugin = runtime.load(spec, store.clone())?;
                // Default retry back-off and failure pause: what a host
                // does with a broken plugin, not an artificial hammering.
                let cfg = PoolConfig {
                    batch_size: 10,
                    max_workers: 1,
                    max_attempts: 1_000,
                    ..PoolConfig::default()
                };
                hostile.push(
                    WorkerPool::start(q, Arc::new(plugin), cfg, clock.clone())
                        .map_err(anyhow::Error::msg)?,
                );
            }
        }
        let handler = Arc::new(load_noop(runtime, &a.plugin, store.clone())?);
        let (e2e, _) = throughput(a.shape(), store, handler, n, clock.clone()).await?;
        let mut failed = 0;
        for p in hostile {
            failed += p.shutdown().await.failed_batches;
        }
        rates.push((e2e, failed));
    }
    println!(
        "  healthy WASM queue alone {:.0} tasks/s; beside trap + loop + memory-bomb plugins {:.0} tasks/s ({:.2}x; {} hostile batches failed meanwhile)",
        rates[0].0,
        rates[1].0,
        rates[1].0 / rates[0].0,
        rates[1].1
    );
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
    let result = throughput(a.shape(), store, handler, case.n, clock).await;
    if let Some(d) = disk {
        d.close().await;
    }
    result
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

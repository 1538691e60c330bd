//! What the benchmarks share: the command-line runner (options parsed with
//! clap, a tokio runtime, the workspace root as working directory), the
//! loader of the components they run, and the push-while-draining
//! throughput measure.
//!
//! Each bench is a `harness = false` target (`cargo bench -p taskhost
//! --bench NAME -- OPTIONS`) that includes this module and uses a part of it.
#![allow(dead_code, reason = "each bench uses a part of the shared code")]

pub mod backend;
pub mod harbor;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser};
use taskhost::clock::Clock;
use taskhost::plugin::{Limits, Plugin, PluginSpec, Runtime};
use taskhost::pool::{BatchHandler, PoolConfig, WorkerPool};
use taskhost::queue::{BaseQueue, NewTask, QueueStore, Task};

/// A bench's options with the ones every bench takes.
#[derive(Debug, Parser)]
struct Cli<A: Args> {
    /// Log filter (tracing syntax), e.g. `error` or `taskhost=debug`.
    #[arg(long, env = "TASKHOST_LOG", default_value = "info")]
    log: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    #[command(flatten)]
    args: A,
}

/// Parses the bench's options, then runs `bench` on a multi-threaded tokio
/// runtime from the workspace root, so relative paths (the default
/// component paths among them) mean what they meant from `cargo run`.
pub fn main<A, F, Fut>(bench: F) -> ExitCode
where
    A: Args,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let cli = Cli::<A>::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Err(e) = std::env::set_current_dir(&root) {
        eprintln!(
            "error: cannot enter the workspace root {}: {e}",
            root.display()
        );
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The cores this machine offers (1 when it cannot tell).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A fresh directory for this run under the system's temporary directory.
pub fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("taskhost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `n` leased-looking tasks with 100-byte payloads, for timing calls.
pub fn synthetic_batch(n: usize) -> Vec<Task> {
    (1..=n as u64)
        .map(|id| Task {
            id,
            queue: "bench".into(),
            unique_key: None,
            payload: vec![b'x'; 100],
            attempt: 1,
            enqueued_at_ms: 0,
        })
        .collect()
}

/// Loads the testkit component in its no-op mode.
pub fn load_noop(runtime: &Runtime, path: &Path, store: Arc<dyn QueueStore>) -> Result<Plugin> {
    let config = [("mode".to_string(), "noop".to_string())].into();
    load_built(runtime, path, store, "testkit", config)
}

/// Loads the component a bench runs, built from the workspace package
/// `package`; the error says how to build it.
pub fn load_built(
    runtime: &Runtime,
    path: &Path,
    store: Arc<dyn QueueStore>,
    package: &str,
    config: std::collections::BTreeMap<String, String>,
) -> Result<Plugin> {
    let spec = PluginSpec {
        name: package.into(),
        path: path.to_owned(),
        config,
        dir: None,
        limits: Limits::default(),
        allowed_hosts: Vec::new(),
        enqueue_to: None,
    };
    runtime.load(spec, store).with_context(|| {
        format!("loading {package} (build it: cargo build --profile plugin --target wasm32-wasip2 --target-dir target/wasm -p {package})")
    })
}

/// The pool a throughput run drains with.
#[derive(Debug, Clone, Copy)]
pub struct PoolShape {
    /// Tasks per batch.
    pub batch_size: usize,
    /// Batches handled at once.
    pub workers: usize,
}

impl PoolShape {
    /// The pool's configuration: this shape, flushing after 1 ms.
    pub fn config(self) -> PoolConfig {
        PoolConfig {
            batch_size: self.batch_size,
            max_workers: self.workers,
            max_latency: Duration::from_millis(1),
            ..PoolConfig::default()
        }
    }
}

/// Whether pushed payloads are random bytes instead of one byte repeated:
/// a store that compresses (PostgreSQL's TOAST) gains nothing from them.
pub static RANDOM_PAYLOADS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A 100-byte payload, as [`RANDOM_PAYLOADS`] says.
pub fn hundred_bytes() -> Vec<u8> {
    if RANDOM_PAYLOADS.load(Ordering::Relaxed) {
        std::iter::repeat_with(|| fastrand::u8(..))
            .take(100)
            .collect()
    } else {
        vec![b'x'; 100]
    }
}

/// Pushes `n` tasks of 100 bytes in batches of 1,000.
pub async fn push_hundred_byte_tasks(queue: &Arc<dyn BaseQueue>, n: usize) -> Result<()> {
    let mut pushed = 0;
    while pushed < n {
        let k = (n - pushed).min(1_000);
        let tasks = (0..k).map(|_| NewTask::new(hundred_bytes())).collect();
        queue.push_batch(tasks).await?;
        pushed += k;
    }
    Ok(())
}

/// Pushes `n` tasks while a pool drains them; returns (end-to-end, drain) tasks/s.
pub async fn throughput(
    shape: PoolShape,
    store: Arc<dyn QueueStore>,
    handler: Arc<dyn BatchHandler>,
    n: usize,
    clock: Arc<dyn Clock>,
) -> Result<(f64, f64)> {
    let queue = store.queue("bench")?;
    let cfg = shape.config();
    let start = Instant::now();
    let pool = WorkerPool::start(queue.clone(), handler, cfg, clock).map_err(anyhow::Error::msg)?;
    let stats = pool.stats();
    push_hundred_byte_tasks(&queue, n).await?;
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

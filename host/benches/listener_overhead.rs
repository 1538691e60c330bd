//! WASM no-op throughput on the memory backend with the HTTP listener and
//! metrics on (an in-process `/metrics` scraped every `--scrape-every`, the
//! pool and its plugin registered as `host run --listen` registers them)
//! and off, alternating in one run. Prints the median of each and how far
//! apart they are. Target (issue 16): at most 3 % apart.
//!
//! Two figures per case: tasks per wall-clock second, and tasks per second
//! of CPU time this process used (user + system, from `getrusage`). On a
//! machine shared with other work the wall clock mostly measures the
//! neighbours; the CPU time is what the listener and metrics cost.
//!
//! The pool's and the plugin slot's recorders (counters, duration
//! histograms, per-version records) are atomics that run either way; "on"
//! adds the listener, the collectors and the scrapes.
//!
//! `cargo bench -p taskhost --bench listener_overhead -- [--tasks N] [--repeat N]`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use taskhost::api::{ApiConfig, ApiServer};
use taskhost::clock;
use taskhost::metrics::{Metrics, PoolSource};
use taskhost::plugin::Runtime;
use taskhost::plugin::swap::PluginSlot;
use taskhost::pool::{PoolConfig, WorkerPool};
use taskhost::queue::QueueStore;
use taskhost::queue::memory::{MemoryOptions, MemoryStore};

mod common;
use common::{load_noop, push_hundred_byte_tasks};

/// Options of the listener-overhead bench.
#[derive(Debug, clap::Args)]
struct Opts {
    /// No-op handler component (the testkit plugin in its default mode).
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/plugin/testkit.wasm")]
    plugin: PathBuf,
    /// Tasks per run.
    #[arg(long, default_value_t = 500_000)]
    tasks: usize,
    /// Runs of each case (alternating which goes first, after one warm-up
    /// run of each); the median is printed.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Tasks per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Time between scrapes of `/metrics` while the listener is on.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    scrape_every: Duration,
}

fn main() -> std::process::ExitCode {
    common::main(|o: Opts| async move {
        if o.tasks == 0 || o.repeat == 0 {
            bail!("--tasks and --repeat must be at least 1");
        }
        run(o).await
    })
}

async fn run(o: Opts) -> Result<()> {
    let runtime = Runtime::new()?;
    println!(
        "memory backend, wasm no-op, {} tasks of 100 bytes per run, batches of {}, {} workers, \
         /metrics scraped every {:?} while on",
        o.tasks, o.batch_size, o.workers, o.scrape_every
    );
    // One run of each first, not counted: the allocator and caches warm.
    once(&o, &runtime, false).await?;
    once(&o, &runtime, true).await?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..o.repeat {
        // Alternating which goes first, so neither always follows the other.
        if i % 2 == 0 {
            off.push(once(&o, &runtime, false).await?);
            on.push(once(&o, &runtime, true).await?);
        } else {
            on.push(once(&o, &runtime, true).await?);
            off.push(once(&o, &runtime, false).await?);
        }
        println!(
            "  run {}: off {:>8.0} tasks/s ({:>8.0} per CPU-s), on {:>8.0} tasks/s ({:>8.0} per CPU-s)",
            i + 1,
            off[i].0,
            off[i].1,
            on[i].0,
            on[i].1
        );
    }
    for (what, pick) in [
        ("tasks/s (wall clock)", 0usize),
        ("tasks per CPU-second", 1),
    ] {
        let median = |v: &[(f64, f64)]| {
            let mut x: Vec<f64> = v
                .iter()
                .map(|r| if pick == 0 { r.0 } else { r.1 })
                .collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let (a, b) = (median(&off), median(&on));
        println!(
            "{what}: off {a:>8.0}, on {b:>8.0} (medians): {:+.2} % (target within 3 %)",
            (b - a) / a * 100.0
        );
    }
    runtime.shutdown();
    Ok(())
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers; all zeroes is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, for RUSAGE_SELF.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// One run: push `tasks` while a pool drains them; returns tasks per
/// wall-clock second and per CPU-second.
async fn once(o: &Opts, runtime: &Runtime, listen: bool) -> Result<(f64, f64)> {
    let clock = clock::system();
    let opts = MemoryOptions {
        capacity: o.tasks,
        ..MemoryOptions::default()
    };
    let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new(opts, clock.clone()));
    let plugin = load_noop(runtime, &o.plugin, store.clone())?;
    let slot = PluginSlot::new(runtime.clone(), plugin, store.clone());
    let queue = store.queue("bench")?;
    let cfg = PoolConfig {
        batch_size: o.batch_size,
        max_workers: o.workers,
        max_latency: Duration::from_millis(1),
        ..PoolConfig::default()
    };
    let start = Instant::now();
    let cpu = cpu_time();
    let pool =
        WorkerPool::start(queue.clone(), slot.clone(), cfg, clock).map_err(anyhow::Error::msg)?;
    let mut listener = None;
    if listen {
        let metrics = Metrics::new(store.clone());
        let server = ApiServer::start(
            &ApiConfig::default(),
            "127.0.0.1:0",
            store.clone(),
            metrics.clone(),
        )
        .await?;
        metrics.set_http(runtime.http().clone());
        metrics.add_pool(PoolSource::of("bench", slot.clone(), &pool, o.workers));
        server.set_ready();
        let uri: hyper::Uri = format!("http://{}/metrics", server.addr()).parse()?;
        let every = o.scrape_every;
        let scraper = tokio::spawn(async move {
            let client: Client<_, Empty<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            loop {
                if let Ok(r) = client.get(uri.clone()).await {
                    let _ = r.into_body().collect().await;
                }
                tokio::time::sleep(every).await;
            }
        });
        listener = Some((server, scraper));
    }
    let stats = pool.stats();
    push_hundred_byte_tasks(&queue, o.tasks).await?;
    while (stats.done.load(Ordering::Relaxed) as usize) < o.tasks {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = o.tasks as f64 / start.elapsed().as_secs_f64();
    let per_cpu = o.tasks as f64 / (cpu_time() - cpu).as_secs_f64();
    pool.shutdown().await;
    if let Some((server, scraper)) = listener {
        scraper.abort();
        let _ = scraper.await;
        server.shutdown().await;
    }
    Ok((rate, per_cpu))
}

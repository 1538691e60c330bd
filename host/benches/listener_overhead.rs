//! WASM no-op throughput on the memory backend with the HTTP listener and
//! metrics on (an in-process `/metrics` scraped every `--scrape-every`, the
//! pool and its plugin registered as `host run --listen` registers them)
//! and off, alternating in one run. Prints the median of each and how far
//! apart they are. Target (issue 16): at most 3 % apart.
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
    /// Runs of each case (alternating off, on); the median is printed.
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
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..o.repeat {
        off.push(once(&o, &runtime, false).await?);
        on.push(once(&o, &runtime, true).await?);
        println!(
            "  run {}: off {:>9.0} tasks/s, on {:>9.0} tasks/s",
            i + 1,
            off[i],
            on[i]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!("listener and metrics off: {off:>9.0} tasks/s (median)");
    println!("listener and metrics on:  {on:>9.0} tasks/s (median)");
    println!(
        "difference: {:+.2} % (on relative to off; target within 3 %)",
        (on - off) / off * 100.0
    );
    runtime.shutdown();
    Ok(())
}

/// One run: push `tasks` while a pool drains them; returns tasks/s.
async fn once(o: &Opts, runtime: &Runtime, listen: bool) -> Result<f64> {
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
    pool.shutdown().await;
    if let Some((server, scraper)) = listener {
        scraper.abort();
        let _ = scraper.await;
        server.shutdown().await;
    }
    Ok(rate)
}

//! `host run`: opens the queues, loads the plugins, runs a pool per plugin.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::clock::{self, Clock};
use crate::config::{Backend, HostConfig};
use crate::plugin::Runtime;
use crate::pool::{PoolSnapshot, WorkerPool};
use crate::queue::disk::DiskStore;
use crate::queue::memory::MemoryStore;
use crate::queue::{NewTask, QueueStats, QueueStore};

/// The opened queue backend, with what is needed to close it.
#[derive(Debug)]
pub struct Queues {
    store: Arc<dyn QueueStore>,
    disk: Option<Arc<DiskStore>>,
}

impl Queues {
    /// Opens the backend the configuration names.
    pub fn open(cfg: &HostConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        Ok(match cfg.backend {
            Backend::Disk => {
                let disk = DiskStore::open(&cfg.data_dir, cfg.disk.options(), clock).with_context(
                    || format!("opening the disk queue in {}", cfg.data_dir.display()),
                )?;
                Self {
                    store: Arc::new(disk.clone()),
                    disk: Some(disk),
                }
            }
            Backend::Memory => Self {
                store: Arc::new(MemoryStore::new(cfg.memory.options(), clock)),
                disk: None,
            },
        })
    }

    /// The store handing out named queues.
    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.store
    }

    /// Flushes and closes the backend.
    pub async fn close(&self) {
        if let Some(d) = &self.disk {
            d.close().await;
        }
    }
}

/// Options of one `host run` beyond the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Push this many sample tasks to the first plugin's queue before starting.
    pub sample_tasks: usize,
    /// Stop by itself once every served queue is empty.
    pub exit_when_drained: bool,
}

/// What one plugin's pool did during a run.
#[derive(Debug, Clone, Serialize)]
pub struct PluginSummary {
    /// Plugin name.
    pub plugin: String,
    /// Queue served.
    pub queue: String,
    /// Pool counters at shutdown.
    pub pool: PoolSnapshot,
    /// Queue counts at shutdown.
    pub queue_stats: QueueStats,
    /// The directory granted to the plugin, if any.
    pub dir: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Wall time from first lease to shutdown.
    pub elapsed: Duration,
    /// One entry per plugin.
    pub plugins: Vec<PluginSummary>,
}

impl RunSummary {
    /// Tasks done per second over the run.
    pub fn tasks_per_sec(&self) -> f64 {
        let done: u64 = self.plugins.iter().map(|p| p.pool.done).sum();
        done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.plugins {
            writeln!(
                f,
                "plugin {} on queue {:?}: {} done, {} retried, {} dead-lettered in {} batches ({} failed)",
                p.plugin,
                p.queue,
                p.pool.done,
                p.pool.retried,
                p.pool.dead,
                p.pool.batches,
                p.pool.failed_batches
            )?;
            writeln!(
                f,
                "  queue now: {} pending, {} delayed, {} leased, {} dead",
                p.queue_stats.pending,
                p.queue_stats.delayed,
                p.queue_stats.leased,
                p.queue_stats.dead
            )?;
            if let Some(d) = &p.dir {
                writeln!(f, "  output directory: {}", d.display())?;
            }
        }
        write!(
            f,
            "elapsed {:.2?}, {:.0} tasks/s",
            self.elapsed,
            self.tasks_per_sec()
        )
    }
}

/// The payload of the `n`th sample task.
pub fn sample_payload(n: usize) -> Vec<u8> {
    format!(r#"{{"sample":{n},"message":"sample task {n}"}}"#).into_bytes()
}

/// Runs the host until `shutdown` resolves (or the queues drain, if asked).
pub async fn run(
    cfg: HostConfig,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary> {
    cfg.validate()?;
    if cfg.plugins.is_empty() {
        bail!("no plugin to run: pass --plugin FILE.wasm or list [[plugins]] in the config file");
    }
    let clock = clock::system();
    let queues = Queues::open(&cfg, clock.clone())?;
    let result = run_with(&cfg, &opts, &queues, clock, shutdown).await;
    queues.close().await;
    result
}

async fn run_with(
    cfg: &HostConfig,
    opts: &RunOptions,
    queues: &Queues,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary> {
    let runtime = Runtime::with_options(crate::plugin::RuntimeOptions {
        http: cfg.http,
        ..Default::default()
    })?;
    // Load every plugin before starting any pool: a broken file stops the
    // host at start, naming the file, before a task is leased.
    let mut loaded = Vec::new();
    for p in &cfg.plugins {
        let plugin = runtime.load(p.spec(), queues.store().clone())?;
        let queue = queues.store().queue(&p.queue)?;
        loaded.push((p, plugin, queue));
    }
    if opts.sample_tasks > 0 {
        let queue = &loaded[0].2;
        for chunk in (0..opts.sample_tasks).collect::<Vec<_>>().chunks(1_000) {
            let tasks = chunk
                .iter()
                .map(|&n| NewTask::new(sample_payload(n)))
                .collect();
            queue
                .push_batch(tasks)
                .await
                .context("pushing sample tasks")?;
        }
        tracing::info!(
            count = opts.sample_tasks,
            queue = queue.name(),
            "pushed sample tasks"
        );
    }
    let mut sources = Vec::new();
    for src in &cfg.sources {
        src.poll
            .validate()
            .map_err(|e| anyhow::anyhow!("source {}: {e}", src.display_name()))?;
        let plugin = crate::source::SourcePlugin::load(
            &runtime,
            src.spec(),
            &src.queue,
            queues.store().clone(),
        )?;
        sources.push((src, plugin, queues.store().queue(&src.queue)?));
    }
    let started = Instant::now();
    let mut pollers = Vec::new();
    for (src, plugin, queue) in sources {
        tracing::info!(source = %src.display_name(), queue = %src.queue, "polling");
        let poller = crate::source::Poller::start(Arc::new(plugin), queue, src.poll)
            .map_err(|e| anyhow::anyhow!("source {}: {e}", src.display_name()))?;
        pollers.push(poller);
    }
    let mut pools = Vec::new();
    for (p, plugin, queue) in loaded {
        tracing::info!(plugin = %p.display_name(), queue = %p.queue, path = %p.path.display(), "serving");
        let pool = WorkerPool::start(queue, Arc::new(plugin), p.pool.clone(), clock.clone())
            .map_err(|e| anyhow::anyhow!("plugin {}: {e}", p.display_name()))?;
        pools.push((p, pool));
    }
    let drained = async {
        if !opts.exit_when_drained {
            return std::future::pending().await;
        }
        loop {
            let mut empty = true;
            for (_, pool) in &pools {
                match pool.queue().stats().await {
                    Ok(s) if s.is_empty() => {}
                    Ok(_) => empty = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading queue length");
                        empty = false;
                    }
                }
            }
            if empty {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: finishing running batches"),
        _ = drained => tracing::info!("queues drained"),
    }
    // Sources first, so nothing new arrives while the pools wind down.
    for poller in pollers {
        poller.shutdown().await;
    }
    let mut plugins = Vec::new();
    for (p, pool) in pools {
        let queue = pool.queue().clone();
        let snapshot = pool.shutdown().await;
        let queue_stats = queue.stats().await.unwrap_or_default();
        plugins.push(PluginSummary {
            plugin: p.display_name(),
            queue: p.queue.clone(),
            pool: snapshot,
            queue_stats,
            dir: p.dir.as_ref().map(|d| d.host.clone()),
        });
    }
    let elapsed = started.elapsed();
    runtime.shutdown();
    Ok(RunSummary { elapsed, plugins })
}

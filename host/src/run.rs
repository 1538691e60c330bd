//! `host run`: opens the queues, loads the plugins, runs a pool per plugin.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::clock::{self, Clock};
use crate::config::HostConfig;
use crate::plugin::Runtime;
use crate::plugin::swap::{HotSwap, PluginSlot, SourceSlot};
use crate::pool::{PoolSnapshot, WorkerPool};
use crate::queue::{self, NewTask, QueueStats, QueueStore};
use crate::registry::RunFile;

/// Opens the queue backend `cfg` names; close it with [`QueueStore::close`].
pub fn open_queues(cfg: &HostConfig, clock: Arc<dyn Clock>) -> Result<Arc<dyn QueueStore>> {
    let backend = cfg.queue_backend()?;
    queue::open(&backend, clock).with_context(|| format!("opening {backend}"))
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
    /// The version live at shutdown.
    pub version: String,
    /// Batches started per version.
    pub batches_by_version: std::collections::BTreeMap<String, u64>,
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
                "plugin {} (version {}) on queue {:?}: {} done, {} retried, {} dead-lettered in {} batches ({} failed)",
                p.plugin,
                p.version,
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
    let runtime = Runtime::with_options(cfg.runtime_options())?;
    // Compiling the plugins and opening the store (whose integrity check
    // reads the whole database) both take a while: run them side by side.
    let warm = {
        let (rt, paths) = (runtime.clone(), plugin_paths(&cfg));
        tokio::task::spawn_blocking(move || paths.iter().for_each(|p| rt.precompile(p)))
    };
    let opened = {
        let (cfg, clock) = (cfg.clone(), clock.clone());
        tokio::task::spawn_blocking(move || open_queues(&cfg, clock)).await
    };
    // A failed warm-up leaves the compile to the load, which reports it.
    let _ = warm.await;
    let queues = opened.context("opening the queue store")??;
    let result = run_with(&cfg, &opts, &queues, runtime, clock, shutdown).await;
    queues.close().await;
    result
}

/// The component files of every plugin and source in `cfg`.
fn plugin_paths(cfg: &HostConfig) -> Vec<PathBuf> {
    let handlers = cfg.plugins.iter().map(|p| p.spec().path);
    let sources = cfg.sources.iter().map(|s| s.spec().path);
    handlers.chain(sources).collect()
}

async fn run_with(
    cfg: &HostConfig,
    opts: &RunOptions,
    queues: &Arc<dyn QueueStore>,
    runtime: Runtime,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary> {
    match queues.ping().await {
        // A store that disagrees with the configuration (a queue's shard
        // count) is a bad config: stop before serving.
        Err(e @ crate::queue::QueueError::Config(_)) => {
            return Err(anyhow::Error::new(e).context("the queue store refuses this configuration"));
        }
        // Serve anyway: the pool backs off and retries until the store is back.
        Err(e) => {
            tracing::error!(error = %e, "queue backend unreachable at start; retrying with back-off")
        }
        Ok(()) => {}
    }
    // Load every plugin before starting any pool: a broken file stops the
    // host at start, naming the file, before a task is leased.
    let mut loaded = Vec::new();
    for p in &cfg.plugins {
        let plugin = runtime.load_async(p.spec(), queues.clone()).await?;
        let slot = PluginSlot::new(runtime.clone(), plugin, queues.clone());
        let queue = queues.queue(&p.queue)?;
        loaded.push((p, slot, queue));
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
        let plugin = crate::plugin::SourcePlugin::load_async(
            &runtime,
            src.spec(),
            &src.queue,
            queues.clone(),
        )
        .await?;
        let slot = SourceSlot::new_source(runtime.clone(), plugin, queues.clone());
        sources.push((src, slot, queues.queue(&src.queue)?));
    }
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut background = tokio::task::JoinSet::new();
    // Handler and source plugins alike: watched, reloaded on SIGHUP and
    // shown by `host status`.
    let mut slots: Vec<Arc<dyn HotSwap>> = Vec::new();
    let mut slot_queues = Vec::new();
    for (p, slot, _) in &loaded {
        slots.push(slot.clone());
        slot_queues.push(p.queue.clone());
    }
    for (src, slot, _) in &sources {
        slots.push(slot.clone());
        slot_queues.push(src.queue.clone());
    }
    let run_file = RunFile::create(&cfg.data_dir, slot_queues)?;
    for slot in &slots {
        if cfg.runtime.watch {
            let h = slot
                .clone()
                .watch(cfg.runtime.watch_interval, stop.child_token());
            background.spawn(async move {
                let _ = h.await;
            });
        }
        // Keep the run file (read by `host status` and `host reload`) in
        // step with the live versions.
        let mut versions = slot.subscribe();
        let (run_file, slots, stop) = (run_file.clone(), slots.clone(), stop.clone());
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = versions.changed() => if r.is_err() { return },
                }
                run_file.write(&slots);
            }
        });
    }
    background.spawn(reload_on_sighup(slots.clone(), stop.clone()));
    run_file.write(&slots);
    // Registered (and the gone hosts' leases reclaimed) before any pool
    // leases; the heartbeat outlives the pools, so no lease of this host
    // looks abandoned while its batches finish.
    let registry = queues.registry();
    crate::fleet::join(&*registry, &run_file, &slots).await;
    let fleet_stop = tokio_util::sync::CancellationToken::new();
    let mut fleet = tokio::task::JoinSet::new();
    fleet.spawn(crate::fleet::keep_alive(
        registry.clone(),
        run_file.clone(),
        slots.clone(),
        fleet_stop.clone(),
    ));
    fleet.spawn(crate::fleet::reload_on_request(
        registry.clone(),
        slots.clone(),
        fleet_stop.clone(),
    ));
    background.spawn(refresh_run_file(
        run_file.clone(),
        slots.clone(),
        stop.clone(),
    ));

    // The HTTP listener (API and /metrics), once every plugin is loaded.
    let api = match crate::api::start_for_run(&cfg.api, queues).await {
        Ok(api) => api,
        Err(e) => {
            stop.cancel();
            while background.join_next().await.is_some() {}
            run_file.remove();
            return Err(e);
        }
    };
    let mut pollers = Vec::new();
    for (src, slot, queue) in sources {
        tracing::info!(source = %src.display_name(), version = %slot.version(), queue = %src.queue, "polling");
        let poller = crate::source::Poller::start(slot.clone(), queue, src.poll)
            .map_err(|e| anyhow::anyhow!("source {}: {e}", src.display_name()))?;
        if let Some((_, metrics)) = &api {
            metrics.add_source(crate::metrics::SourceEntry {
                name: src.display_name(),
                queue: src.queue.clone(),
                slot,
                stats: poller.stats().clone(),
            });
        }
        pollers.push(poller);
    }
    let mut pools = Vec::new();
    for (p, slot, queue) in loaded {
        tracing::info!(plugin = %p.display_name(), version = %slot.version(), queue = %p.queue, path = %p.path.display(), "serving");
        let pool = WorkerPool::start(queue, slot.clone(), p.pool.clone(), clock.clone())
            .map_err(|e| anyhow::anyhow!("plugin {}: {e}", p.display_name()))?;
        run_file.set_gauge(pools.len(), Arc::new(pool.load_gauge()));
        pools.push((p, slot, pool));
    }
    crate::fleet::beat(&*registry, &run_file, &slots).await;
    if let Some((api, metrics)) = &api {
        metrics.set_http(runtime.http().clone());
        for (p, slot, pool) in &pools {
            metrics.add_pool(crate::metrics::PoolSource::of(
                &p.queue,
                slot.clone(),
                pool,
                p.pool.max_workers,
            ));
        }
        api.set_ready();
    }
    let drained = async {
        if !opts.exit_when_drained {
            return std::future::pending().await;
        }
        loop {
            let mut empty = true;
            for (_, _, pool) in &pools {
                match pool.queue().is_empty().await {
                    Ok(true) => {}
                    Ok(false) => empty = false,
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
    // A store that failed for good (damaged data) stops the host: serving
    // on would only log the same error forever and report wrong counts.
    let mut failed = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: finishing running batches"),
        _ = drained => tracing::info!("queues drained"),
        e = queues.failed() => {
            tracing::error!(error = %e, "queue store failed: stopping");
            failed = Some(e);
        }
    }
    // Sources first, so nothing new arrives while the pools wind down.
    for poller in pollers {
        poller.shutdown().await;
    }
    stop.cancel();
    while background.join_next().await.is_some() {}
    let mut plugins = Vec::new();
    for (p, slot, pool) in pools {
        let queue = pool.queue().clone();
        let snapshot = pool.shutdown().await;
        let queue_stats = queue.stats().await.unwrap_or_default();
        plugins.push(PluginSummary {
            plugin: p.display_name(),
            queue: p.queue.clone(),
            pool: snapshot,
            queue_stats,
            dir: p.dir.as_ref().map(|d| d.host.clone()),
            version: slot.version(),
            batches_by_version: slot.batches_by_version(),
        });
    }
    let elapsed = started.elapsed();
    fleet_stop.cancel();
    while fleet.join_next().await.is_some() {}
    if let Err(e) = registry.deregister(run_file.id()).await {
        tracing::warn!(error = %e, "cannot deregister this host (its registration expires by itself)");
    }
    if let Some((api, _)) = api {
        api.shutdown().await;
    }
    run_file.remove();
    runtime.shutdown();
    if let Some(e) = failed {
        return Err(
            anyhow::Error::new(e).context("the host stopped because its queue store failed")
        );
    }
    Ok(RunSummary { elapsed, plugins })
}

/// How often the run file's batch counts are brought up to date while
/// batches run (`host status --json` shows them).
const RUN_FILE_REFRESH: Duration = Duration::from_secs(1);

/// Rewrites the run file at most once per [`RUN_FILE_REFRESH`], and only
/// when a batch started since the last write: counts stay current without a
/// write per batch.
async fn refresh_run_file(
    run_file: Arc<RunFile>,
    slots: Vec<Arc<dyn HotSwap>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let counts = |slots: &[Arc<dyn HotSwap>]| -> Vec<_> {
        slots.iter().map(|s| s.batches_by_version()).collect()
    };
    let mut written = counts(&slots);
    let mut tick = crate::backoff::Ticker::new(RUN_FILE_REFRESH);
    while tick.next(&stop).await {
        let now = counts(&slots);
        if now == written {
            continue;
        }
        written = now;
        let info = run_file.info(&slots);
        let file = run_file.clone();
        let _ = tokio::task::spawn_blocking(move || file.write_info(&info)).await;
    }
}

/// Reloads every plugin on SIGHUP (what `host reload` sends).
async fn reload_on_sighup(slots: Vec<Arc<dyn HotSwap>>, stop: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change only");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading plugins");
            for slot in &slots {
                slot.reload_logged().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = slots;
        stop.cancelled().await;
    }
}

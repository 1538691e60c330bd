//! The `host` command: run plugins over queues, push tasks, show status.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use taskhost::clock;
use taskhost::config::{Backend, HostConfig, PluginConfig};
use taskhost::plugin::DirGrant;
use taskhost::queue::NewTask;
use taskhost::run::{Queues, RunOptions};

mod new_plugin;

/// A task-processing host whose handlers are WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about,
    long_about = None,
    after_help = "Plugins are hot-swapped: `host run` watches each plugin file and, once a change has \
settled, compiles the new file beside the running one; if it is a valid component of the \
handler world, new batches go to it while running batches finish on the old version, \
otherwise the old version keeps serving and the error is logged. Source plugins ([[sources]]) \
are swapped the same way. `host reload` (or SIGHUP) asks for the same at once."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `taskhost=debug`.
    #[arg(long, global = true, env = "TASKHOST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve queues with plugins until SIGINT/SIGTERM (or until drained).
    Run(RunArgs),
    /// Push tasks to a queue (works whether or not a host is running).
    Push(PushArgs),
    /// Show pending, delayed, leased and dead-lettered counts, and running hosts.
    Status(StatusArgs),
    /// Ask every host running on the data directory to reload its plugins (SIGHUP).
    Reload(ReloadArgs),
    /// Write a ready-to-build plugin skeleton (rust, python or js).
    NewPlugin(new_plugin::NewPluginArgs),
}

/// Where the queues are.
#[derive(Debug, Args)]
struct StoreArgs {
    /// TOML configuration file; every option has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory of the disk backend [default: taskhost-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Queue backend [default: disk].
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Redis server holding the queues, redis://host:port/db (implies --backend redis).
    #[arg(long, env = "TASKHOST_QUEUE_URL")]
    queue_url: Option<String>,
}

impl StoreArgs {
    fn load(&self) -> Result<HostConfig> {
        let mut cfg = match &self.config {
            Some(p) => HostConfig::load(p)?,
            None => HostConfig::default(),
        };
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(u) = &self.queue_url {
            cfg.queue_url = Some(u.clone());
            cfg.backend = Backend::Redis;
        }
        if let Some(b) = self.backend {
            cfg.backend = b;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The plugin component (.wasm) to run.
    #[arg(long, short)]
    plugin: Option<PathBuf>,
    /// Queue the plugin serves [default: default].
    #[arg(long, short)]
    queue: Option<String>,
    /// Host directory the plugin may use, as HOST[:GUEST] (guest path defaults to /data).
    #[arg(long)]
    dir: Option<DirGrant>,
    /// Plugin config value, KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Tasks per batch [default: 100].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Batches handled at once [default: 4].
    #[arg(long)]
    max_workers: Option<usize>,
    /// Deliveries before a failing task is dead-lettered [default: 10].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Memory limit per plugin instance, MiB [default: 128]; growing past it traps.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Time limit per plugin call, e.g. 30s [default: 30s]; a call over it traps.
    #[arg(long, value_parser = humantime::parse_duration)]
    time_limit: Option<Duration>,
    /// Push this many sample tasks before starting (for a first try).
    #[arg(long, default_value_t = 0)]
    sample_tasks: usize,
    /// Exit once every served queue is empty, printing a summary.
    #[arg(long)]
    exit_when_drained: bool,
    /// Do not watch plugin files for new versions (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
    /// Do not keep compiled plugins on disk (DATA_DIR/cache by default).
    #[arg(long)]
    no_cache: bool,
}

impl RunArgs {
    fn config(&self) -> Result<HostConfig> {
        let mut cfg = self.store.load()?;
        if self.no_watch {
            cfg.runtime.watch = false;
        }
        if self.no_cache {
            cfg.runtime.cache = false;
        }
        if let Some(p) = &self.plugin {
            match cfg.plugins.len() {
                0 => cfg.plugins.push(PluginConfig::new(p)),
                1 => cfg.plugins[0].path = p.clone(),
                n => {
                    bail!("the config file lists {n} plugins; --plugin works only with none or one")
                }
            }
        }
        let overrides = self.queue.is_some()
            || self.dir.is_some()
            || !self.set.is_empty()
            || self.batch_size.is_some()
            || self.max_workers.is_some()
            || self.max_attempts.is_some()
            || self.memory_mib.is_some()
            || self.time_limit.is_some();
        if overrides {
            let [p] = cfg.plugins.as_mut_slice() else {
                bail!("plugin options on the command line need exactly one plugin (use --plugin)");
            };
            if let Some(q) = &self.queue {
                p.queue = q.clone();
            }
            if let Some(d) = &self.dir {
                p.dir = Some(d.clone());
            }
            for kv in &self.set {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--set {kv:?}: expected KEY=VALUE");
                };
                p.config.insert(k.to_owned(), v.to_owned());
            }
            if let Some(v) = self.batch_size {
                p.pool.batch_size = v;
            }
            if let Some(v) = self.max_workers {
                p.pool.max_workers = v;
            }
            if let Some(v) = self.max_attempts {
                p.pool.max_attempts = v;
            }
            if let Some(v) = self.memory_mib {
                p.limits.memory_mib = v;
            }
            if let Some(v) = self.time_limit {
                p.limits.time = v;
            }
        }
        Ok(cfg)
    }
}

#[derive(Debug, Args)]
struct PushArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue to push to.
    queue: String,
    /// Payloads; with none, reads one payload per line from --file or stdin.
    payloads: Vec<String>,
    /// File with one payload per line (`-` for stdin).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Unique key of the (single) payload: a pending task with it makes this a no-op.
    #[arg(long)]
    unique_key: Option<String>,
    /// Lines are KEY<TAB>PAYLOAD: each line's key is its unique key.
    #[arg(long)]
    keyed: bool,
    /// Hold the tasks back this long, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
}

#[derive(Debug, Args)]
struct ReloadArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this queue.
    #[arg(long, short)]
    queue: Option<String>,
    /// Also list this many newest dead letters per queue.
    #[arg(long, default_value_t = 0)]
    dead: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Push(a) => push(a).await,
        Cmd::Status(a) => status(a).await,
        Cmd::Reload(a) => reload(a),
        Cmd::NewPlugin(a) => new_plugin::new_plugin(a),
    }
}

async fn run(a: RunArgs) -> Result<()> {
    let cfg = a.config()?;
    let opts = RunOptions {
        sample_tasks: a.sample_tasks,
        exit_when_drained: a.exit_when_drained,
    };
    let summary = taskhost::run::run(cfg, opts, shutdown_signal()).await?;
    println!("{summary}");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the host");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn persistent(cfg: &HostConfig, what: &str) -> Result<()> {
    if cfg.backend == Backend::Memory {
        bail!(
            "`host {what}` needs a persistent backend: the memory backend lives inside one running host"
        );
    }
    Ok(())
}

async fn push(a: PushArgs) -> Result<()> {
    let cfg = a.store.load()?;
    persistent(&cfg, "push")?;
    if a.unique_key.is_some() && a.payloads.len() != 1 {
        bail!("--unique-key goes with exactly one payload argument");
    }
    let lines: Vec<String> = if !a.payloads.is_empty() {
        a.payloads.clone()
    } else {
        let mut text = String::new();
        match a.file.as_deref() {
            Some(p) if p.as_os_str() != "-" => {
                text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading payloads from {}", p.display()))?;
            }
            _ => {
                std::io::stdin()
                    .lock()
                    .read_to_string(&mut text)
                    .context("reading payloads from stdin")?;
            }
        }
        text.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut tasks = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let (key, payload) = if a.keyed {
            let Some((k, p)) = line.split_once('\t') else {
                bail!("line {}: --keyed expects KEY<TAB>PAYLOAD", n + 1);
            };
            (Some(k.to_owned()), p)
        } else {
            (a.unique_key.clone(), line.as_str())
        };
        tasks.push(NewTask {
            payload: payload.as_bytes().to_vec(),
            unique_key: key,
            delay: a.delay,
        });
    }
    let queues = Queues::open(&cfg, clock::system())?;
    let queue = queues.store().queue(&a.queue)?;
    let (mut created, mut dups) = (0usize, 0usize);
    let result = async {
        for chunk in tasks.chunks(1_000) {
            for p in queue.push_batch(chunk.to_vec()).await? {
                match p {
                    taskhost::queue::Pushed::Created(_) => created += 1,
                    taskhost::queue::Pushed::Duplicate(_) => dups += 1,
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    queues.close().await;
    result.with_context(|| format!("pushing to queue {:?}", a.queue))?;
    println!(
        "pushed {created} tasks to {:?}; {dups} duplicates of pending tasks skipped",
        a.queue
    );
    Ok(())
}

fn reload(a: ReloadArgs) -> Result<()> {
    let cfg = a.store.load()?;
    let hosts = taskhost::run::live_hosts(&cfg.data_dir);
    if hosts.is_empty() {
        bail!("no host is running on {}", cfg.data_dir.display());
    }
    for h in &hosts {
        taskhost::run::signal_reload(h.pid)
            .with_context(|| format!("signalling host {}", h.pid))?;
    }
    println!(
        "asked {} host(s) to reload; `host status` shows the live versions",
        hosts.len()
    );
    Ok(())
}

async fn status(a: StatusArgs) -> Result<()> {
    let cfg = a.store.load()?;
    persistent(&cfg, "status")?;
    if cfg.backend == Backend::Disk && !cfg.data_dir.join(taskhost::queue::disk::DB_FILE).exists() {
        bail!(
            "no queue database in {} (nothing pushed yet?)",
            cfg.data_dir.display()
        );
    }
    let queues = Queues::open(&cfg, clock::system())?;
    if let Err(e) = queues.check().await {
        queues.close().await;
        return Err(e.context("cannot read queue status"));
    }
    let result = status_of(&a, &queues, &cfg.data_dir).await;
    queues.close().await;
    result
}

async fn status_of(a: &StatusArgs, queues: &Queues, data_dir: &std::path::Path) -> Result<()> {
    let hosts = taskhost::run::live_hosts(data_dir);
    let names = match &a.queue {
        Some(q) => vec![q.clone()],
        None => queues.store().known_queues().await?,
    };
    let mut rows = Vec::new();
    for name in &names {
        let q = queues.store().queue(name)?;
        let stats = q.stats().await?;
        let dead = q.dead_letters(a.dead).await?;
        rows.push((name.clone(), stats, dead));
    }
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(name, s, dead)| {
                serde_json::json!({
                    "queue": name, "pending": s.pending, "delayed": s.delayed,
                    "leased": s.leased, "dead": s.dead,
                    "hosts": hosts.iter().filter_map(|h| {
                        h.plugins.iter().find(|p| &p.queue == name).map(|p| serde_json::json!({
                            "pid": h.pid, "plugin": p.name, "version": p.version,
                            "batches_by_version": p.batches_by_version,
                        }))
                    }).collect::<Vec<_>>(),
                    "dead_letters": dead.iter().map(|d| serde_json::json!({
                        "id": d.task.id, "attempt": d.task.attempt, "reason": d.reason,
                        "payload": String::from_utf8_lossy(&d.task.payload),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}",
        "queue", "pending", "delayed", "leased", "dead"
    );
    for (name, s, dead) in &rows {
        println!(
            "{name:<24} {:>10} {:>10} {:>10} {:>10}",
            s.pending, s.delayed, s.leased, s.dead
        );
        for d in dead {
            println!(
                "  dead #{} (attempt {}): {}",
                d.task.id, d.task.attempt, d.reason
            );
        }
    }
    if rows.is_empty() {
        println!("(no queues)");
    }
    for h in hosts {
        for p in &h.plugins {
            println!(
                "host pid {}: plugin {} version {} on queue {:?} ({})",
                h.pid,
                p.name,
                p.version,
                p.queue,
                p.path.display()
            );
        }
    }
    Ok(())
}

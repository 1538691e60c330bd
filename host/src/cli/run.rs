//! `host run`: serve queues with plugins until a signal or until drained.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use taskhost::config::{HostConfig, PluginConfig};
use taskhost::plugin::DirGrant;
use taskhost::run::RunOptions;

use super::StoreArgs;

/// Options of `host run`.
#[derive(Debug, Args)]
pub struct RunArgs {
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
    /// Serve the HTTP API and /metrics on this address, e.g. 127.0.0.1:7878.
    #[arg(long)]
    listen: Option<String>,
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
        if let Some(l) = &self.listen {
            cfg.api.listen = Some(l.clone());
            cfg.api.validate().map_err(anyhow::Error::msg)?;
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
                check_dir(&d.host)?;
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

/// Refuses a `--dir` host directory that does not exist: creating it would
/// let a typo go unnoticed while the plugin writes somewhere unexpected.
fn check_dir(host: &std::path::Path) -> Result<()> {
    match std::fs::metadata(host) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("--dir: {} is not a directory", host.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--dir: host directory {} does not exist (create it first, e.g. mkdir -p {})",
            host.display(),
            host.display()
        ),
        Err(e) => bail!("--dir: cannot use host directory {}: {e}", host.display()),
    }
}

/// Runs the host until SIGINT/SIGTERM (or until drained) and prints the summary.
pub async fn run(a: RunArgs) -> Result<()> {
    let cfg = a.config()?;
    let opts = RunOptions {
        sample_tasks: a.sample_tasks,
        exit_when_drained: a.exit_when_drained,
    };
    let summary = taskhost::run::run(cfg, opts, shutdown_signal()).await?;
    outln!("{summary}");
    Ok(())
}

pub async fn shutdown_signal() {
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

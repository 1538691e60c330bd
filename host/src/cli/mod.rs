//! The `host` subcommands, one file per command; `main.rs` parses the
//! command line and dispatches here. Binary-only: nothing here is part of
//! the `taskhost` library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use taskhost::config::{ConfigError, HostConfig};
use taskhost::queue::{Backend, QueueStore};
use taskhost::run::open_queues;

/// `println!` that drops the text when stdout is closed (`host ... | head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::log::stdout(format_args!($($arg)*))
    };
}

pub mod bindgen;
pub mod check;
pub mod componentize;
pub mod hosts;
pub mod init;
pub mod log;
pub mod new_plugin;
pub mod ops;
pub mod peek;
pub mod push;
pub mod reload;
pub mod run;
pub mod serve;
pub mod status;
pub mod wit;

/// Where the queues are.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// TOML configuration file; every option has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory of the disk backend [default: taskhost-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Queue backend [default: disk].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Server holding the queues: redis://host:port/db (implies --backend redis) or
    /// postgres://user:pass@host:port/db (implies --backend postgres).
    #[arg(long, env = "TASKHOST_QUEUE_URL")]
    queue_url: Option<String>,
}

impl StoreArgs {
    pub fn load(&self) -> Result<HostConfig> {
        let mut cfg = match &self.config {
            Some(p) => HostConfig::load(p)?,
            None => HostConfig::default(),
        };
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(u) = &self.queue_url {
            cfg.queue_url = Some(u.clone());
            cfg.backend = Backend::for_url(u);
        }
        if let Some(b) = self.backend {
            cfg.backend = b.into();
        }
        match (cfg.validate(), &self.config) {
            (Ok(()), _) => Ok(cfg),
            // Like a parse error, a bad value names the file it came from.
            (Err(ConfigError::Invalid(m)), Some(p)) => {
                bail!("config file {}: {m}", p.display())
            }
            (Err(e), _) => Err(e.into()),
        }
    }
}

/// Refuses a command that needs queues outliving one host.
pub fn persistent(cfg: &HostConfig, what: &str) -> Result<()> {
    if cfg.backend == Backend::Memory {
        bail!(
            "`host {what}` needs a persistent backend: the memory backend lives inside one running host"
        );
    }
    Ok(())
}

/// Opens the configured persistent store and checks that it answers.
pub async fn open_store(store: &StoreArgs, what: &str) -> Result<Arc<dyn QueueStore>> {
    let cfg = store.load()?;
    persistent(&cfg, what)?;
    if !cfg.queue_backend()?.exists() {
        bail!(
            "no queue database in {} (nothing pushed yet?)",
            cfg.data_dir.display()
        );
    }
    let queues = open_queues(&cfg, taskhost::clock::system())?;
    if let Err(e) = queues.ping().await {
        queues.close().await;
        return Err(
            anyhow::Error::new(e).context(format!("cannot reach the queues for `host {what}`"))
        );
    }
    Ok(queues)
}

/// The values of `--backend`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// Embedded on-disk queue (SQLite) in the data directory: persistent.
    Disk,
    /// In-process bounded queue: fastest, lost when the process ends.
    Memory,
    /// Redis at `queue_url`: many hosts share the queues.
    Redis,
    /// PostgreSQL at `queue_url`: many hosts share the queues.
    Postgres,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Disk => Backend::Disk,
            BackendArg::Memory => Backend::Memory,
            BackendArg::Redis => Backend::Redis,
            BackendArg::Postgres => Backend::Postgres,
        }
    }
}

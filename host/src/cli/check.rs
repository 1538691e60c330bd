//! `host check`: is the queue store sound? (SQLite's full integrity check
//! on the disk backend; a ping on a server.)

use anyhow::{Context, Result, bail};
use clap::Args;
use taskhost::clock;
use taskhost::queue::disk::{self, DiskStore};
use taskhost::queue::{BackendConfig, QueueStore};
use taskhost::run::open_queues;

use super::{StoreArgs, persistent};

/// Options of `host check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// Checks the store; fails, listing the problems, when it is damaged.
pub async fn check(a: CheckArgs) -> Result<()> {
    let cfg = a.store.load()?;
    persistent(&cfg, "check")?;
    let backend = cfg.queue_backend()?;
    if let BackendConfig::Disk { data_dir, options } = &backend {
        if !backend.exists() {
            bail!(
                "no queue store in {} (nothing pushed yet?)",
                data_dir.display()
            );
        }
        let db = data_dir.join(disk::DB_FILE);
        // The full check first: it reads a file too damaged to open.
        if db.exists() {
            let problems = match DiskStore::integrity_check(data_dir).await {
                Ok(p) => p,
                Err(e) => bail!(
                    "{} is damaged: SQLite cannot run its integrity check on it ({e}). Restore \
                     the file from a backup, or move it aside with `host init --force`",
                    db.display()
                ),
            };
            if !problems.is_empty() {
                bail!(
                    "{} is damaged; SQLite's integrity check says:\n  {}",
                    db.display(),
                    problems.join("\n  ")
                );
            }
        }
        // Opening checks the store's identity (a lost or replaced file).
        let store = DiskStore::open(data_dir, options.clone(), clock::system())
            .with_context(|| format!("checking {backend}"))?;
        store.close().await;
        outln!("ok: {} passed SQLite's integrity check", db.display());
        return Ok(());
    }
    let queues = open_queues(&cfg, clock::system())?;
    let ping = queues.ping().await;
    queues.close().await;
    ping.with_context(|| format!("checking {backend}"))?;
    outln!("ok: {} answers", queues.describe());
    Ok(())
}

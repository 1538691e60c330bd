//! `host init`: create the disk queue store, or with `--force` start a new,
//! empty one in place of a lost or damaged store.

use anyhow::{Context, Result, bail};
use clap::Args;
use taskhost::clock;
use taskhost::queue::BackendConfig;
use taskhost::queue::disk::{self, DiskStore};
use taskhost::registry;

use super::StoreArgs;

/// Options of `host init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Move the existing database aside (renamed, never deleted) and start a
    /// new, empty store: for a store refused as missing, empty or damaged.
    #[arg(long)]
    force: bool,
}

/// Creates (or with `--force` replaces) the disk store.
pub async fn init(a: InitArgs) -> Result<()> {
    let cfg = a.store.load()?;
    let backend = cfg.queue_backend()?;
    let BackendConfig::Disk { data_dir, options } = &backend else {
        bail!("`host init` is for the disk backend; {backend} needs no initialisation");
    };
    if a.force {
        let live = registry::live_hosts(data_dir);
        if !live.is_empty() {
            let pids: Vec<String> = live.iter().map(|h| h.pid.to_string()).collect();
            bail!(
                "hosts are running on {} (pid {}): stop them before replacing the store",
                data_dir.display(),
                pids.join(", ")
            );
        }
        let moved = disk::move_aside(data_dir, clock::system().now_ms())
            .with_context(|| format!("moving the old store in {} aside", data_dir.display()))?;
        for m in &moved {
            outln!("moved aside: {}", m.display());
        }
    }
    let store = DiskStore::open(data_dir, options.clone(), clock::system())
        .with_context(|| format!("opening {backend}"))?;
    let path = store.path().to_path_buf();
    store.close().await;
    outln!("ready: {}", path.display());
    Ok(())
}

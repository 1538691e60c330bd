//! `host reload`: ask every host on the data directory to reload its plugins.

use anyhow::{Context, Result, bail};
use clap::Args;

use super::StoreArgs;

/// Options of `host reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// Sends SIGHUP to every live host on the data directory.
pub fn reload(a: ReloadArgs) -> Result<()> {
    let cfg = a.store.load()?;
    let hosts = taskhost::registry::live_hosts(&cfg.data_dir);
    if hosts.is_empty() {
        bail!("no host is running on {}", cfg.data_dir.display());
    }
    for h in &hosts {
        taskhost::registry::signal_reload(h)
            .with_context(|| format!("signalling host {}", h.pid))?;
    }
    outln!(
        "asked {} host(s) to reload; `host status` shows the live versions",
        hosts.len()
    );
    Ok(())
}

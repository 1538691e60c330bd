//! `host reload`: ask every running host to reload its plugins: SIGHUP to
//! the hosts on the data directory, or a request through Redis or
//! PostgreSQL to every host on it, whatever machine it runs on.

use anyhow::{Context, Result, bail};
use clap::Args;
use taskhost::clock;
use taskhost::queue::Backend;
use taskhost::run::open_queues;

use super::StoreArgs;

/// Options of `host reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// Asks every live host to reload (SIGHUP on disk, pub/sub over Redis, a
/// count in each host's registry row on PostgreSQL).
pub async fn reload(a: ReloadArgs) -> Result<()> {
    let cfg = a.store.load()?;
    if matches!(cfg.backend, Backend::Redis | Backend::Postgres) {
        let queues = open_queues(&cfg, clock::system())?;
        let asked = queues.registry().request_reload().await;
        let place = queues.describe();
        queues.close().await;
        let asked = asked.context("asking the hosts to reload")?;
        if asked == 0 {
            bail!("no host is listening on {place}");
        }
        outln!("asked {asked} host(s) to reload; `host hosts` shows the live versions");
        return Ok(());
    }
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

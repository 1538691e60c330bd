//! `host hosts`: the hosts serving the backend's queues, from its registry
//! (disk: the run files of the data directory; Redis: the heartbeat keys).

use anyhow::{Context, Result};
use clap::Args;
use taskhost::clock;
use taskhost::queue::{Backend, HostInfo};
use taskhost::run::open_queues;

use super::StoreArgs;

/// Options of `host hosts`.
#[derive(Debug, Args)]
pub struct HostsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the live hosts: id, machine, pid, start, plugins and workers.
pub async fn hosts(a: HostsArgs) -> Result<()> {
    let cfg = a.store.load()?;
    let hosts = match cfg.backend {
        // Memory queues live inside one host each: list the hosts whose
        // run files are in the data directory.
        Backend::Memory => {
            let dir = cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || taskhost::registry::live_hosts(&dir))
                .await
                .context("reading the run files")?
        }
        // A data directory without a database has no host on it; opening
        // the store would create one.
        Backend::Disk if !cfg.queue_backend()?.exists() => Vec::new(),
        _ => {
            let queues = open_queues(&cfg, clock::system())?;
            let r = taskhost::fleet::hosts(&*queues.registry()).await;
            queues.close().await;
            r.context("reading the host registry")?
        }
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&hosts)?);
        return Ok(());
    }
    if hosts.is_empty() {
        outln!("(no hosts)");
        return Ok(());
    }
    let now = clock::system().now_ms();
    for h in &hosts {
        print_host(h, now);
    }
    Ok(())
}

fn print_host(h: &HostInfo, now: u64) {
    let ago = |ms: u64| format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0);
    outln!(
        "host {} on {} pid {}: started {}, last heartbeat {}",
        if h.id.is_empty() { "?" } else { &h.id },
        if h.machine.is_empty() {
            "?"
        } else {
            &h.machine
        },
        h.pid,
        ago(h.started_at_ms),
        ago(h.last_heartbeat_ms)
    );
    for p in &h.plugins {
        outln!(
            "  plugin {} version {} on queue {:?}: {}/{} workers busy",
            p.name,
            p.version,
            p.queue,
            p.busy_workers,
            p.max_workers
        );
    }
}

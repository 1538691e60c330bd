//! `host status`: queue counts, dead letters, and the hosts running.

use anyhow::Result;
use clap::Args;
use taskhost::queue::QueueStore;

use super::{StoreArgs, open_store};

/// Options of `host status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
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

/// Prints the queues' counts (a table, or JSON) and the running hosts.
pub async fn status(a: StatusArgs) -> Result<()> {
    let queues = open_store(&a.store, "status").await?;
    let result = status_of(&a, &*queues).await;
    queues.close().await;
    result
}

async fn status_of(a: &StatusArgs, queues: &dyn QueueStore) -> Result<()> {
    // Every backend's registry: the run files on disk, every machine's
    // heartbeat over Redis.
    let hosts = taskhost::fleet::hosts(&*queues.registry()).await?;
    let names = match &a.queue {
        Some(q) => vec![q.clone()],
        None => queues.known_queues().await?,
    };
    let mut rows = Vec::new();
    for name in &names {
        let q = queues.queue(name)?;
        let stats = q.stats().await?;
        let dead = q.dead_letters(a.dead).await?;
        let paused = match q.admin() {
            Some(admin) => admin.is_paused().await?,
            None => false,
        };
        rows.push((name.clone(), stats, dead, paused));
    }
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(name, s, dead, paused)| {
                serde_json::json!({
                    "queue": name, "pending": s.pending, "delayed": s.delayed,
                    "leased": s.leased, "dead": s.dead, "paused": paused,
                    "hosts": hosts.iter().filter_map(|h| {
                        h.plugins.iter().find(|p| &p.queue == name).map(|p| serde_json::json!({
                            "pid": h.pid, "id": h.id, "machine": h.machine, "plugin": p.name, "version": p.version,
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
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}",
        "queue",
        "pending",
        "delayed",
        "leased",
        "dead"
    );
    for (name, s, dead, paused) in &rows {
        outln!(
            "{name:<24} {:>10} {:>10} {:>10} {:>10}{}",
            s.pending,
            s.delayed,
            s.leased,
            s.dead,
            if *paused { "  (paused)" } else { "" }
        );
        for d in dead {
            outln!(
                "  dead #{} (attempt {}): {}",
                d.task.id,
                d.task.attempt,
                d.reason
            );
        }
    }
    if rows.is_empty() {
        outln!("(no queues)");
    }
    for h in hosts {
        for p in &h.plugins {
            outln!(
                "host pid {} on {}: plugin {} version {} on queue {:?} ({})",
                h.pid,
                h.machine,
                p.name,
                p.version,
                p.queue,
                p.path.display()
            );
        }
    }
    Ok(())
}

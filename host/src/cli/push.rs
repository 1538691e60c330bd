//! `host push`: push tasks to a queue, whether or not a host is running.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use taskhost::clock;
use taskhost::queue::NewTask;
use taskhost::run::open_queues;

use super::{StoreArgs, persistent};

/// Options of `host push`.
#[derive(Debug, Args)]
pub struct PushArgs {
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

/// Pushes the payloads and prints how many were created and skipped.
pub async fn push(a: PushArgs) -> Result<()> {
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
    let queues = open_queues(&cfg, clock::system())?;
    let queue = queues.queue(&a.queue)?;
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
    outln!(
        "pushed {created} tasks to {:?}; {dups} duplicates of pending tasks skipped",
        a.queue
    );
    Ok(())
}

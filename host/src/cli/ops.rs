//! `host dead retry|purge`, `host pause`, `host resume`, `host cancel`:
//! operator actions straight against the backend, host running or not.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use taskhost::queue::{BaseQueue, QueueAdmin, TaskId, Which};

use super::{StoreArgs, open_store};

/// Runs `f` on the operator actions of queue `name`, then closes the store.
pub async fn with_admin<T>(
    store: &StoreArgs,
    what: &str,
    name: &str,
    f: impl AsyncFnOnce(&dyn QueueAdmin) -> Result<T>,
) -> Result<T> {
    let queues = open_store(store, what).await?;
    let result = async {
        let q: Arc<dyn BaseQueue> = queues.queue(name)?;
        let admin = q
            .admin()
            .with_context(|| format!("the {} has no operator actions", queues.describe()))?;
        f(admin).await
    }
    .await;
    queues.close().await;
    result
}

/// Options of `host dead`.
#[derive(Debug, Args)]
pub struct DeadArgs {
    #[command(subcommand)]
    cmd: DeadCmd,
}

#[derive(Debug, Subcommand)]
enum DeadCmd {
    /// Move dead letters back to pending, delivery count reset (all, or the `--id`s).
    Retry(DeadPick),
    /// Delete dead letters (all, or the `--id`s).
    Purge(DeadPick),
}

/// Which dead letters of which queue.
#[derive(Debug, Args)]
struct DeadPick {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue name.
    queue: String,
    /// Only this task id (repeatable); without any, every dead letter.
    #[arg(long = "id")]
    ids: Vec<TaskId>,
}

impl DeadPick {
    fn which(&self) -> Which {
        if self.ids.is_empty() {
            Which::All
        } else {
            Which::Ids(self.ids.clone())
        }
    }
}

/// Retries or purges dead letters and prints how many.
pub async fn dead(a: DeadArgs) -> Result<()> {
    let (pick, retry) = match &a.cmd {
        DeadCmd::Retry(p) => (p, true),
        DeadCmd::Purge(p) => (p, false),
    };
    let what = if retry { "dead retry" } else { "dead purge" };
    let which = pick.which();
    let n = with_admin(&pick.store, what, &pick.queue, async |q| {
        Ok(if retry {
            q.retry_dead(which).await?
        } else {
            q.purge_dead(which).await?
        })
    })
    .await?;
    let done = if retry { "retried" } else { "purged" };
    outln!("{done} {n} dead letter(s) of queue {:?}", pick.queue);
    if !pick.ids.is_empty() && (n as usize) < pick.ids.len() {
        outln!(
            "{} of the given ids were not dead letters of {:?}{}",
            pick.ids.len() - n as usize,
            pick.queue,
            if retry {
                " (or a live task holds their unique key)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Options of `host pause` and `host resume`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue name.
    queue: String,
}

/// Pauses (`true`) or resumes a queue for every host on the backend.
pub async fn pause(a: QueueArgs, paused: bool) -> Result<()> {
    let what = if paused { "pause" } else { "resume" };
    with_admin(&a.store, what, &a.queue, async |q| {
        Ok(q.set_paused(paused).await?)
    })
    .await?;
    if paused {
        outln!(
            "queue {:?} paused: hosts stop leasing from it within a second (pushes still accepted)",
            a.queue
        );
    } else {
        outln!("queue {:?} resumed", a.queue);
    }
    Ok(())
}

/// Options of `host cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue name.
    queue: String,
    /// Id of the pending or delayed task.
    id: TaskId,
    /// Instead of deleting it, make the delayed task visible now.
    #[arg(long)]
    run_now: bool,
}

/// Cancels a pending or delayed task (or runs a delayed one now).
pub async fn cancel(a: CancelArgs) -> Result<()> {
    let run_now = a.run_now;
    with_admin(&a.store, "cancel", &a.queue, async |q| {
        if run_now {
            q.run_now(a.id).await?;
        } else {
            q.cancel(a.id).await?;
        }
        Ok(())
    })
    .await?;
    if run_now {
        outln!("task {} of queue {:?} is visible now", a.id, a.queue);
    } else {
        outln!("cancelled task {} of queue {:?}", a.id, a.queue);
    }
    Ok(())
}

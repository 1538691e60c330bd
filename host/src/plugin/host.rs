//! The `taskhost:plugin/host` and `taskhost:plugin/bulk` imports: logging,
//! enqueueing and config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::BatchState;
use super::bindings::taskhost::plugin::bulk;
use super::bindings::taskhost::plugin::host::{Host, Level};
use super::bindings::taskhost::plugin::types::{self as wit, Enqueued};
use crate::queue::{BaseQueue, NewTask, Pushed, QueueStore};

/// Longest log line kept from a plugin; the rest is cut so a chatty plugin
/// cannot flood the host's log.
const MAX_LOG_LINE: usize = 8 * 1024;

/// Largest payload a plugin may enqueue.
const MAX_ENQUEUE_PAYLOAD: usize = 16 << 20;

/// How long an `enqueue` may wait (e.g. for room in a full queue); the
/// epoch deadline cannot interrupt a host call, so it carries its own.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by every batch of one plugin.
#[derive(Debug)]
pub(crate) struct PluginShared {
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub queues: Arc<dyn QueueStore>,
}

impl wit::Host for BatchState {}

impl Host for BatchState {
    async fn log(&mut self, level: Level, message: String) {
        let plugin = self.shared.name.as_str();
        let queue = &*self.queue;
        if self.log_left == 0 {
            return;
        }
        if message.len() >= self.log_left {
            self.log_left = 0;
            tracing::warn!(
                plugin,
                queue,
                "plugin used up its log budget for this call; dropping further lines"
            );
            return;
        }
        self.log_left -= message.len();
        let mut msg = message;
        if msg.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push_str("...[cut]");
        }
        match level {
            Level::Trace => tracing::trace!(plugin, queue, "{msg}"),
            Level::Debug => tracing::debug!(plugin, queue, "{msg}"),
            Level::Info => tracing::info!(plugin, queue, "{msg}"),
            Level::Warn => tracing::warn!(plugin, queue, "{msg}"),
            Level::Error => tracing::error!(plugin, queue, "{msg}"),
        }
    }

    async fn enqueue(&mut self, task: wit::NewTask) -> Result<Enqueued, String> {
        if task.payload.len() > MAX_ENQUEUE_PAYLOAD {
            return Err(format!(
                "payload of {} bytes is over the {MAX_ENQUEUE_PAYLOAD}-byte limit",
                task.payload.len()
            ));
        }
        let name = if task.queue.is_empty() {
            self.queue.to_string()
        } else {
            task.queue
        };
        let queue = self.shared.queues.queue(&name).map_err(|e| e.to_string())?;
        let new = NewTask {
            payload: task.payload,
            unique_key: task.unique_key,
            delay: task.delay_ms.map(Duration::from_millis),
        };
        let mut pushed = push_within_timeout(&*queue, &name, vec![new]).await?;
        pushed
            .pop()
            .map(enqueued)
            .ok_or_else(|| format!("queue {name:?} answered no result"))
    }

    async fn get_config(&mut self, key: String) -> Option<String> {
        self.shared.config.get(&key).cloned()
    }

    async fn get_config_all(&mut self) -> Vec<(String, String)> {
        self.shared
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl bulk::Host for BatchState {
    async fn enqueue_many(&mut self, tasks: Vec<wit::NewTask>) -> Vec<Result<Enqueued, String>> {
        let mut out: Vec<Result<Enqueued, String>> = Vec::with_capacity(tasks.len());
        // Per target queue, in first-seen order: the tasks and their slots in `out`.
        let mut groups: Vec<(String, Vec<usize>, Vec<NewTask>)> = Vec::new();
        for task in tasks {
            if task.payload.len() > MAX_ENQUEUE_PAYLOAD {
                out.push(Err(format!(
                    "payload of {} bytes is over the {MAX_ENQUEUE_PAYLOAD}-byte limit",
                    task.payload.len()
                )));
                continue;
            }
            let name = if task.queue.is_empty() {
                self.queue.to_string()
            } else {
                task.queue
            };
            let new = NewTask {
                payload: task.payload,
                unique_key: task.unique_key,
                delay: task.delay_ms.map(Duration::from_millis),
            };
            let slot = out.len();
            out.push(Err(String::new()));
            match groups.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, slots, batch)) => {
                    slots.push(slot);
                    batch.push(new);
                }
                None => groups.push((name, vec![slot], vec![new])),
            }
        }
        for (name, slots, batch) in groups {
            let pushed = match self.shared.queues.queue(&name) {
                Ok(queue) => push_within_timeout(&*queue, &name, batch).await,
                Err(e) => Err(e.to_string()),
            };
            match pushed {
                Ok(results) => {
                    for (slot, p) in slots.into_iter().zip(results) {
                        out[slot] = Ok(enqueued(p));
                    }
                }
                Err(e) => {
                    for slot in slots {
                        out[slot] = Err(e.clone());
                    }
                }
            }
        }
        out
    }
}

/// Pushes a batch, giving up after [`ENQUEUE_TIMEOUT`].
async fn push_within_timeout(
    queue: &dyn BaseQueue,
    name: &str,
    batch: Vec<NewTask>,
) -> Result<Vec<Pushed>, String> {
    let n = batch.len();
    match tokio::time::timeout(ENQUEUE_TIMEOUT, queue.push_batch(batch)).await {
        Ok(Ok(results)) if results.len() == n => Ok(results),
        Ok(Ok(results)) => Err(format!(
            "queue {name:?} answered {} results for {n} tasks",
            results.len()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "enqueue to {name:?} timed out after {ENQUEUE_TIMEOUT:?}"
        )),
    }
}

fn enqueued(p: Pushed) -> Enqueued {
    match p {
        Pushed::Created(id) => Enqueued::Created(id),
        Pushed::Duplicate(id) => Enqueued::Duplicate(id),
    }
}

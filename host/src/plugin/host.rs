//! The `taskhost:plugin/host` imports: logging, enqueueing and config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::BatchState;
use super::bindings::taskhost::plugin::host::{Host, Level};
use super::bindings::taskhost::plugin::types::{self as wit, Enqueued};
use crate::queue::{NewTask, Pushed, QueueStore};

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
        match tokio::time::timeout(ENQUEUE_TIMEOUT, queue.push(new)).await {
            Ok(Ok(Pushed::Created(id))) => Ok(Enqueued::Created(id)),
            Ok(Ok(Pushed::Duplicate(id))) => Ok(Enqueued::Duplicate(id)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "enqueue to {name:?} timed out after {ENQUEUE_TIMEOUT:?}"
            )),
        }
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

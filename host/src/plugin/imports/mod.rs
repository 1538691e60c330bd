//! Host imports every world links: `taskhost:plugin/host` (log, enqueue,
//! config) and `taskhost:plugin/bulk` (enqueue-many), one file per concern.
//! They run on the store's [`CallState`], so they see the calling plugin's
//! grants and the queue of the running batch.

mod config;
mod enqueue;
mod log;

pub(super) use enqueue::new_task;

use super::bindings::handler::taskhost::plugin::{bulk, host};
use super::bindings::wit::{self, Enqueued};
use super::store::CallState;

impl wit::Host for CallState {}

impl host::Host for CallState {
    async fn log(&mut self, level: host::Level, message: String) {
        log::log(self, level, message);
    }

    async fn enqueue(&mut self, task: wit::NewTask) -> Result<Enqueued, String> {
        enqueue::enqueue(self, task).await
    }

    async fn get_config(&mut self, key: String) -> Option<String> {
        config::get(self, &key)
    }

    async fn get_config_all(&mut self) -> Vec<(String, String)> {
        config::all(self)
    }
}

impl bulk::Host for CallState {
    async fn enqueue_many(&mut self, tasks: Vec<wit::NewTask>) -> Vec<Result<Enqueued, String>> {
        enqueue::enqueue_many(self, tasks).await
    }
}

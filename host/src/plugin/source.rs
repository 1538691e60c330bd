//! The source world: a component the host polls for new tasks, run as a
//! [`Source`] feeding one queue.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::bindings::source::SourcePluginPre;
use super::engine::Runtime;
use super::error::PluginError;
use super::guard::guarded;
use super::imports::new_task;
use super::load::Plugin;
use super::spec::PluginSpec;
use super::store::CallState;
use crate::queue::{NewTask, QueueStore};
use crate::source::Source;

/// The WIT world a source plugin must implement.
pub const SOURCE_WORLD: &str = "taskhost:plugin/source-plugin@0.1.0";

/// A linked source component, ready to instantiate, and the queue its
/// tasks go to.
pub struct SourceWorld {
    pre: SourcePluginPre<CallState>,
    queue: Arc<str>,
}

/// A loaded source plugin; every poll runs in a fresh instance.
pub type SourcePlugin = Plugin<SourceWorld>;

impl Plugin<SourceWorld> {
    /// Compiles (or takes from the cache) and links a source component
    /// whose tasks go to `queue`. Blocks while compiling: from async code
    /// use [`SourcePlugin::load_async`].
    pub fn load(
        runtime: &Runtime,
        spec: PluginSpec,
        queue: &str,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Self, PluginError> {
        runtime.load_world(
            spec,
            SOURCE_WORLD,
            queues,
            |linker, c| {
                Ok(SourceWorld {
                    pre: SourcePluginPre::new(linker.instantiate_pre(c)?)?,
                    queue: queue.into(),
                })
            },
            |spec, _| spec.config.clone(),
        )
    }

    /// [`SourcePlugin::load`] on a blocking thread.
    pub async fn load_async(
        runtime: &Runtime,
        spec: PluginSpec,
        queue: &str,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Self, PluginError> {
        let (rt, queue, name) = (runtime.clone(), queue.to_owned(), spec.name.clone());
        tokio::task::spawn_blocking(move || Self::load(&rt, spec, &queue, queues))
            .await
            .map_err(|e| PluginError::Engine(format!("loading source {name}: {e}")))?
    }

    /// The queue its tasks go to.
    pub fn queue(&self) -> &str {
        &self.world.queue
    }
}

#[async_trait]
impl Source for Plugin<SourceWorld> {
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String> {
        let spec = &self.ctx.spec;
        guarded(
            &spec.name,
            &self.info.version,
            spec.limits.time,
            self.poll_unguarded(max),
        )
        .await
    }
}

impl Plugin<SourceWorld> {
    async fn poll_unguarded(&self, max: usize) -> Result<Vec<NewTask>, String> {
        let SourceWorld { pre, queue } = &self.world;
        let stderr = MemoryOutputPipe::new(self.ctx.spec.limits.stderr_bytes);
        let mut store = self
            .ctx
            .store(pre.engine(), queue.clone(), stderr.clone())?;
        let name = &self.ctx.spec.name;
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("source {name} failed to instantiate: {e:#}"))?;
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let got = instance
            .taskhost_plugin_source()
            .call_poll(&mut store, max)
            .await
            .map_err(|e| {
                let err = String::from_utf8_lossy(&stderr.contents())
                    .trim()
                    .to_owned();
                format!("source {name} trapped: {e:#}; stderr: {err}")
            })?
            .map_err(|e| format!("source {name}: {e}"))?;
        // The task's `queue` field is not used: a source feeds its own queue.
        Ok(got.into_iter().map(new_task).collect())
    }
}

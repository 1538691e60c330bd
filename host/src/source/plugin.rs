//! Components of the `source-plugin` world as [`Source`]s.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::Source;
use crate::plugin::{BatchState, Loaded, PluginError, PluginParts, PluginSpec, Runtime};
use crate::queue::{NewTask, QueueStore};

/// Bindings of the `source-plugin` world; shared types and host imports
/// are the handler world's.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source-plugin",
        imports: { default: async },
        exports: { default: async },
        with: {
            "taskhost:plugin/types": crate::plugin::bindings::taskhost::plugin::types,
            "taskhost:plugin/host": crate::plugin::bindings::taskhost::plugin::host,
        },
    });
}

/// The WIT world a source plugin must implement.
pub const SOURCE_WORLD: &str = "taskhost:plugin/source-plugin@0.1.0";

/// A loaded source plugin; every poll runs in a fresh instance.
pub struct SourcePlugin {
    pre: bindings::SourcePluginPre<BatchState>,
    spec: PluginSpec,
    parts: PluginParts,
    queue: Arc<str>,
    loaded: Loaded,
}

impl std::fmt::Debug for SourcePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcePlugin")
            .field("spec", &self.spec)
            .field("version", &self.loaded.version)
            .finish()
    }
}

impl SourcePlugin {
    /// Compiles (or takes from the cache) and links a source component
    /// whose tasks go to `queue`. Blocks while compiling: from async code
    /// use [`SourcePlugin::load_async`].
    pub fn load(
        runtime: &Runtime,
        spec: PluginSpec,
        queue: &str,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Self, PluginError> {
        let (pre, loaded) = runtime.prepare(&spec, SOURCE_WORLD, |c| {
            bindings::SourcePluginPre::new(runtime.linker().instantiate_pre(c)?)
        })?;
        Ok(Self {
            pre,
            parts: runtime.parts(&spec, queues),
            spec,
            queue: queue.into(),
            loaded,
        })
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

    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The queue its tasks go to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Version tag: the first 12 hex digits of the component's SHA-256.
    pub fn version(&self) -> &str {
        &self.loaded.version
    }

    /// What loading found out (hash, cache use, load time).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }
}

#[async_trait]
impl Source for SourcePlugin {
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String> {
        let stderr = MemoryOutputPipe::new(self.spec.limits.stderr_bytes);
        let mut store = self.parts.store(
            self.pre.engine(),
            &self.spec,
            self.queue.clone(),
            stderr.clone(),
        )?;
        let name = &self.spec.name;
        let instance = self
            .pre
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
        Ok(got
            .into_iter()
            .map(|t| NewTask {
                payload: t.payload,
                unique_key: t.unique_key,
                delay: t.delay_ms.map(std::time::Duration::from_millis),
            })
            .collect())
    }
}

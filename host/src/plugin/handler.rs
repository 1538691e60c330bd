//! The handler world: a component that answers a batch of tasks with one
//! outcome per task, run as the pool's [`BatchHandler`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::bindings::handler::BulkHandlerPluginPre;
use super::bindings::wit;
use super::engine::Runtime;
use super::error::PluginError;
use super::guard::{Stopped, guarded};
use super::limiter::LimitHit;
use super::load::Plugin;
use super::spec::PluginSpec;
use super::store::CallState;
use crate::pool::timings::BatchResult;
use crate::pool::{BatchError, BatchHandler, Outcome};
use crate::queue::{QueueStore, Task};

/// The WIT world a handler plugin must implement.
pub const HANDLER_WORLD: &str = "taskhost:plugin/handler-plugin@0.1.0";

/// A linked handler component (either handler world), ready to instantiate.
pub struct HandlerWorld(BulkHandlerPluginPre<CallState>);

impl Runtime {
    /// Checks, compiles (or takes from the cache) and links a handler
    /// plugin; refuses files of the wrong kind. Blocks while compiling: from
    /// async code use [`Runtime::load_async`].
    pub fn load(
        &self,
        spec: PluginSpec,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Plugin, PluginError> {
        self.load_world(
            spec,
            "",
            queues,
            |linker, c| {
                Ok(HandlerWorld(BulkHandlerPluginPre::new(
                    linker.instantiate_pre(c)?,
                )?))
            },
            |spec, info| {
                let mut config = spec.config.clone();
                config.insert("taskhost.plugin".into(), spec.name.clone());
                config.insert("taskhost.version".into(), info.version.clone());
                config
            },
        )
    }

    /// [`Runtime::load`] on a blocking thread.
    pub async fn load_async(
        &self,
        spec: PluginSpec,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Plugin, PluginError> {
        let rt = self.clone();
        let name = spec.name.clone();
        tokio::task::spawn_blocking(move || rt.load(spec, queues))
            .await
            .map_err(|e| PluginError::Engine(format!("loading plugin {name}: {e}")))?
    }
}

impl Plugin<HandlerWorld> {
    /// Creates and drops one fresh instance without calling it.
    pub async fn instantiate_only(&self) -> Result<(), BatchError> {
        let pre = &self.world.0;
        let stderr = MemoryOutputPipe::new(self.ctx.spec.limits.stderr_bytes);
        let mut store = self
            .ctx
            .store(pre.engine(), Arc::from(""), stderr)
            .map_err(BatchError)?;
        pre.instantiate_async(&mut store)
            .await
            .map_err(|e| BatchError(format!("failed to instantiate: {}", root_cause(&e).0)))?;
        Ok(())
    }

    /// Runs one batch in a fresh instance, within the plugin's time limit.
    pub async fn call(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        self.call_classified(batch).await.map_err(|f| f.error)
    }

    /// [`Plugin::call`], a failure telling how the call ended.
    pub async fn call_classified(&self, batch: &[Task]) -> Result<Vec<Outcome>, CallFailed> {
        let spec = &self.ctx.spec;
        guarded(
            &spec.name,
            &self.info.version,
            spec.limits.time,
            self.call_unguarded(batch),
        )
        .await
    }

    async fn call_unguarded(&self, batch: &[Task]) -> Result<Vec<Outcome>, CallFailed> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let pre = &self.world.0;
        let spec = &self.ctx.spec;
        let stderr = MemoryOutputPipe::new(spec.limits.stderr_bytes);
        let mut store = self
            .ctx
            .store(pre.engine(), first.queue.clone(), stderr.clone())
            .map_err(|e| CallFailed {
                result: BatchResult::Error,
                error: BatchError(e),
            })?;
        let fail = |what: &str, e: wasmtime::Error| {
            let l = &spec.limits;
            // The limits in force go into the reason, so a dead letter says
            // whether a bigger limit would have helped.
            let (cause, trace) = root_cause(&e);
            let mut msg = format!(
                "plugin {} version {} {what} (limits: {} MiB memory, {:?} per call): {cause}",
                spec.name, self.info.version, l.memory_mib, l.time,
            );
            let err = stderr.contents();
            if !err.is_empty() {
                let text = String::from_utf8_lossy(&err);
                msg.push_str("; stderr: ");
                msg.push_str(text.trim());
            }
            // The backtrace last: a reason is read from its start.
            if let Some(trace) = trace {
                msg.push_str("; ");
                msg.push_str(&trace);
            }
            CallFailed {
                result: classify(&e),
                error: BatchError(msg),
            }
        };
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| fail("failed to instantiate", e))?;
        let tasks: Vec<wit::Task<'_>> = batch.iter().map(to_wit).collect();
        let outcomes = instance
            .taskhost_plugin_handler()
            .call_handle(&mut store, &tasks)
            .await
            .map_err(|e| fail("trapped", e))?;
        Ok(outcomes.into_iter().map(from_wit).collect())
    }
}

#[async_trait]
impl BatchHandler for Plugin<HandlerWorld> {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        self.call(batch).await
    }
}

/// A handler call that failed as a whole, and how.
#[derive(Debug)]
pub struct CallFailed {
    /// Trap, a limit, or another error.
    pub result: BatchResult,
    /// The reason, as the tasks' dead letters carry it.
    pub error: BatchError,
}

impl From<Stopped> for CallFailed {
    fn from(s: Stopped) -> Self {
        let result = match s {
            Stopped::TimeLimit(_) => BatchResult::TimeLimit,
            Stopped::Panicked(_) => BatchResult::Error,
        };
        Self {
            result,
            error: BatchError(s.into()),
        }
    }
}

/// A limit the call stopped at, a trap of the guest, or another error.
fn classify(e: &wasmtime::Error) -> BatchResult {
    if let Some(limit) = LimitHit::find(e) {
        limit
    } else if e.chain().any(|c| c.is::<wasmtime::Trap>()) {
        BatchResult::Trap
    } else {
        BatchResult::Error
    }
}

/// A wasmtime error chain on one line, and apart from it its wasm backtrace
/// (if any), so the reason leads with the cause rather than the frames.
fn root_cause(e: &wasmtime::Error) -> (String, Option<String>) {
    let trace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|b| b.to_string());
    let mut parts: Vec<String> = e
        .chain()
        .map(|c| c.to_string())
        .filter(|p| Some(p) != trace.as_ref())
        .collect();
    parts.dedup();
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    (one_line(&parts.join(": ")), trace.map(|t| one_line(&t)))
}

fn to_wit(t: &Task) -> wit::Task<'_> {
    wit::Task {
        id: t.id,
        queue: &t.queue,
        unique_key: t.unique_key.as_deref(),
        payload: &t.payload,
        attempt: t.attempt,
        enqueued_at_ms: t.enqueued_at_ms,
    }
}

fn from_wit(o: wit::Outcome) -> Outcome {
    match o {
        wit::Outcome::Done => Outcome::Done,
        wit::Outcome::Retry(ms) => Outcome::Retry(ms.map(Duration::from_millis)),
        wit::Outcome::Fail(reason) => Outcome::Fail(reason),
    }
}

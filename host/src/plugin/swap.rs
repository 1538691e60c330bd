//! Hot swap: a plugin slot whose code can be replaced while calls run.
//!
//! The slot holds an `Arc<Plugin<W>>`; each call (a batch or a poll)
//! clones the `Arc` when it starts, so it runs start to end on one version,
//! while the next call picks up whatever is current. A new version is
//! compiled and linked beside the running one and swapped in only when that
//! succeeded: a broken file never replaces a working plugin, and there is no
//! gap in service. Handler plugins ([`PluginSlot`]) and source plugins
//! ([`SourceSlot`]) swap the same way; [`HotSwap`] is what the host does
//! with any slot.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::Runtime;
use super::error::PluginError;
use super::handler::HandlerWorld;
use super::history::{SlotHistory, VersionStats};
use super::load::Plugin;
use super::source::{SourcePlugin, SourceWorld};
use super::spec::PluginSpec;
use crate::pool::timings::BatchResult;
use crate::pool::{BatchError, BatchHandler, Outcome};
use crate::queue::{NewTask, QueueStore, Task};
use crate::source::Source;

type LoadFuture<W> = Pin<Box<dyn Future<Output = Result<Plugin<W>, PluginError>> + Send>>;

/// Loads the slot's file again.
type Loader<W> = Box<dyn Fn() -> LoadFuture<W> + Send + Sync>;

/// A swappable handler plugin serving one queue.
pub type PluginSlot = Slot<HandlerWorld>;

/// A swappable source plugin feeding one queue.
pub type SourceSlot = Slot<SourceWorld>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file holds the version already running.
    Unchanged(String),
    /// A new version is live.
    Swapped {
        /// The version replaced.
        from: String,
        /// The version now live.
        to: String,
    },
}

/// A plugin of world `W` that can be replaced while it serves.
pub struct Slot<W> {
    loader: Loader<W>,
    spec: PluginSpec,
    current: RwLock<Arc<Plugin<W>>>,
    version_tx: watch::Sender<String>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Versions loaded, swapped and refused; calls per version.
    history: SlotHistory,
    attempts_tx: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
}

impl<W> std::fmt::Debug for Slot<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("plugin", &self.spec.name)
            .field("version", &*self.version_tx.borrow())
            .finish()
    }
}

impl PluginSlot {
    /// A slot serving `plugin`, reloading from its spec's path.
    pub fn new(runtime: Runtime, plugin: Plugin, queues: Arc<dyn QueueStore>) -> Arc<Self> {
        let spec = plugin.spec().clone();
        Slot::with_loader(
            plugin,
            Box::new(move || {
                let (runtime, spec, queues) = (runtime.clone(), spec.clone(), queues.clone());
                Box::pin(async move { runtime.load_async(spec, queues).await })
            }),
        )
    }
}

impl SourceSlot {
    /// A slot polling `source`, reloading from its spec's path.
    pub fn new_source(
        runtime: Runtime,
        source: SourcePlugin,
        queues: Arc<dyn QueueStore>,
    ) -> Arc<Self> {
        let spec = source.spec().clone();
        let queue = source.queue().to_owned();
        Slot::with_loader(
            source,
            Box::new(move || {
                let (runtime, spec, queue, queues) =
                    (runtime.clone(), spec.clone(), queue.clone(), queues.clone());
                Box::pin(
                    async move { SourcePlugin::load_async(&runtime, spec, &queue, queues).await },
                )
            }),
        )
    }
}

impl<W: Send + Sync + 'static> Slot<W> {
    /// A slot serving `plugin` that reloads with `loader`.
    fn with_loader(plugin: Plugin<W>, loader: Loader<W>) -> Arc<Self> {
        let (version_tx, _) = watch::channel(plugin.version().to_owned());
        let history = SlotHistory::starting_with(plugin.version());
        Arc::new(Self {
            loader,
            spec: plugin.spec().clone(),
            current: RwLock::new(Arc::new(plugin)),
            version_tx,
            reload_lock: tokio::sync::Mutex::new(()),
            history,
            attempts_tx: watch::channel(0).0,
            last_error: Mutex::new(None),
        })
    }

    /// The version new calls go to.
    pub fn current(&self) -> Arc<Plugin<W>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live version, counted as one more call of it, and its record.
    fn start_call(&self) -> (Arc<Plugin<W>>, Arc<VersionStats>) {
        let plugin = self.current();
        let stats = self.history.start_call(plugin.version());
        (plugin, stats)
    }
}

/// What the host does with a hot-swappable slot, whatever world it serves:
/// show its version, reload it, watch its file.
#[async_trait]
pub trait HotSwap: Send + Sync + 'static {
    /// The plugin's spec (name, path, limits).
    fn spec(&self) -> &PluginSpec;
    /// The live version tag.
    fn version(&self) -> String;
    /// Watches the live version tag.
    fn subscribe(&self) -> watch::Receiver<String>;
    /// Calls (batches or polls) started per version since the slot was made.
    fn batches_by_version(&self) -> BTreeMap<String, u64>;
    /// Versions loaded, swapped in and refused; calls per version.
    fn history(&self) -> &SlotHistory;
    /// Loads the file again and swaps it in if it is a new, valid version.
    async fn reload(&self) -> Result<Reloaded, PluginError>;
    /// Reloads and logs the result; a failure keeps the old version serving.
    async fn reload_logged(&self);
    /// Watches the number of reloads attempted (whatever their outcome).
    fn reload_attempts(&self) -> watch::Receiver<u64>;
    /// Why the last refused reload was refused, if it was.
    fn last_error(&self) -> Option<String>;
    /// Watches the plugin file and reloads it once a change has settled.
    ///
    /// A change counts once the file's size and modification time stayed the
    /// same for one whole `interval`, so a copy still in progress is not
    /// loaded; a file that is still broken after that is refused by
    /// validation and retried at its next change.
    fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>;
}

#[async_trait]
impl<W: Send + Sync + 'static> HotSwap for Slot<W> {
    fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    fn version(&self) -> String {
        self.version_tx.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<String> {
        self.version_tx.subscribe()
    }

    fn batches_by_version(&self) -> BTreeMap<String, u64> {
        self.history.calls_by_version()
    }

    fn history(&self) -> &SlotHistory {
        &self.history
    }

    async fn reload(&self) -> Result<Reloaded, PluginError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let new = match (self.loader)().await {
            Ok(new) => new,
            Err(e) => {
                self.history.refused(&self.version(), e.to_string());
                return Err(e);
            }
        };
        let old = self.current();
        let (from, to) = (old.version().to_owned(), new.version().to_owned());
        if new.sha256() == old.sha256() {
            return Ok(Reloaded::Unchanged(from));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        self.version_tx.send_replace(to.clone());
        self.history.swapped(&from, &to);
        tracing::info!(plugin = %self.spec.name, %from, %to, "plugin swapped; running calls finish on the old version");
        Ok(Reloaded::Swapped { from, to })
    }

    async fn reload_logged(&self) {
        let result = self.reload().await;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(|e| e.to_string());
        self.attempts_tx.send_modify(|n| *n += 1);
        match result {
            Ok(Reloaded::Unchanged(v)) => {
                tracing::debug!(plugin = %self.spec.name, version = %v, "plugin file unchanged")
            }
            Ok(Reloaded::Swapped { .. }) => {}
            Err(e) => tracing::error!(
                plugin = %self.spec.name, file = %self.spec.path.display(), version = %self.version(),
                error = %e, "reload refused; the running version keeps serving"
            ),
        }
    }

    fn reload_attempts(&self) -> watch::Receiver<u64> {
        self.attempts_tx.subscribe()
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let path = self.spec.path.clone();
            // Start from the file as it was when loaded, so a change made
            // before this task first runs is not mistaken for the baseline.
            let mut seen = self.current().info.file_stamp;
            let mut pending: Option<Stamp> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let now = stamp(&path).await;
                match pending {
                    // Unchanged for a whole interval since the change: load.
                    Some(p) if p == now => {
                        pending = None;
                        seen = now;
                        self.reload_logged().await;
                    }
                    _ if now != seen => pending = Some(now),
                    _ => pending = None,
                }
            }
        })
    }
}

/// Size, modification time and inode of a file (None if it cannot be read).
pub(crate) type Stamp = Option<(u64, SystemTime, u64)>;

async fn stamp(path: &std::path::Path) -> Stamp {
    from_metadata(tokio::fs::metadata(path).await.ok()?)
}

/// The stamp of a file's metadata.
pub(super) fn from_metadata(m: std::fs::Metadata) -> Stamp {
    // The inode catches a same-sized file renamed into place within the
    // file system's timestamp granularity.
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.len(), m.modified().ok()?, ino))
}

#[async_trait]
impl BatchHandler for PluginSlot {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let (plugin, stats) = self.start_call();
        let started = std::time::Instant::now();
        let answer = plugin.call_classified(batch).await;
        let result = match &answer {
            Ok(o) if o.len() == batch.len() => BatchResult::Ok,
            // The pool fails the batch for the wrong count.
            Ok(_) => BatchResult::Error,
            Err(f) => f.result,
        };
        stats.record(result, started.elapsed());
        answer.map_err(|f| f.error)
    }
}

#[async_trait]
impl Source for SourceSlot {
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String> {
        let (plugin, stats) = self.start_call();
        let started = std::time::Instant::now();
        let answer = plugin.poll(max).await;
        let result = match &answer {
            Ok(_) => BatchResult::Ok,
            Err(_) => BatchResult::Error,
        };
        stats.record(result, started.elapsed());
        answer
    }
}

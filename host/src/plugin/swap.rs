//! Hot swap: a plugin slot whose code can be replaced while batches run.
//!
//! The slot holds an `Arc<Plugin>`; each batch clones the `Arc` when it
//! starts, so it runs start to end on one version, while the next batch
//! picks up whatever is current. A new version is compiled and linked beside
//! the running one and swapped in only when that succeeded: a broken file
//! never replaces a working plugin (stop-then-start reloads drop or stall
//! work; this has no gap). Handler plugins ([`PluginSlot`]) and source
//! plugins ([`SourceSlot`]) swap the same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Loaded, Plugin, PluginError, PluginSpec, Runtime};
use crate::pool::{BatchError, BatchHandler, Outcome};
use crate::queue::{NewTask, QueueStore, Task};
use crate::source::{Source, SourcePlugin};

/// A loaded component a [`Slot`] can hold and replace.
pub trait Swappable: Send + Sync + 'static {
    /// The spec it was loaded from (the file the slot watches).
    fn spec(&self) -> &PluginSpec;
    /// What loading found out: version, hash, file stamp.
    fn loaded(&self) -> &Loaded;
}

impl Swappable for Plugin {
    fn spec(&self) -> &PluginSpec {
        Plugin::spec(self)
    }
    fn loaded(&self) -> &Loaded {
        &self.loaded
    }
}

impl Swappable for SourcePlugin {
    fn spec(&self) -> &PluginSpec {
        SourcePlugin::spec(self)
    }
    fn loaded(&self) -> &Loaded {
        SourcePlugin::loaded(self)
    }
}

type LoadFuture<P> = Pin<Box<dyn Future<Output = Result<P, PluginError>> + Send>>;

/// Loads the slot's file again.
type Loader<P> = Box<dyn Fn() -> LoadFuture<P> + Send + Sync>;

/// A swappable handler plugin serving one queue.
pub type PluginSlot = Slot<Plugin>;

/// A swappable source plugin feeding one queue.
pub type SourceSlot = Slot<SourcePlugin>;

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

/// A component that can be replaced while it serves.
pub struct Slot<P> {
    loader: Loader<P>,
    spec: PluginSpec,
    current: RwLock<Arc<P>>,
    version_tx: watch::Sender<String>,
    reload_lock: tokio::sync::Mutex<()>,
    batches: Mutex<BTreeMap<String, u64>>,
    attempts_tx: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
}

impl<P: Swappable> std::fmt::Debug for Slot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("plugin", &self.spec.name)
            .field("version", &self.version())
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

impl<P: Swappable> Slot<P> {
    /// A slot serving `plugin` that reloads with `loader`.
    fn with_loader(plugin: P, loader: Loader<P>) -> Arc<Self> {
        let (version_tx, _) = watch::channel(plugin.loaded().version.clone());
        Arc::new(Self {
            loader,
            spec: plugin.spec().clone(),
            current: RwLock::new(Arc::new(plugin)),
            version_tx,
            reload_lock: tokio::sync::Mutex::new(()),
            batches: Mutex::new(BTreeMap::new()),
            attempts_tx: watch::channel(0).0,
            last_error: Mutex::new(None),
        })
    }

    /// The version new batches (or polls) go to.
    pub fn current(&self) -> Arc<P> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live version tag.
    pub fn version(&self) -> String {
        self.version_tx.borrow().clone()
    }

    /// Watches the live version tag.
    pub fn subscribe(&self) -> watch::Receiver<String> {
        self.version_tx.subscribe()
    }

    /// The plugin's spec (name, path, limits).
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// Batches (or polls) started per version since the slot was made.
    pub fn batches_by_version(&self) -> BTreeMap<String, u64> {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the file again and swaps it in if it is a new, valid version.
    pub async fn reload(&self) -> Result<Reloaded, PluginError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let new = (self.loader)().await?;
        let old = self.current();
        let (from, to) = (old.loaded().version.clone(), new.loaded().version.clone());
        if new.loaded().sha256 == old.loaded().sha256 {
            return Ok(Reloaded::Unchanged(from));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        self.version_tx.send_replace(to.clone());
        tracing::info!(plugin = %self.spec.name, %from, %to, "plugin swapped; running calls finish on the old version");
        Ok(Reloaded::Swapped { from, to })
    }

    /// Watches the number of reloads attempted (whatever their outcome).
    pub fn reload_attempts(&self) -> watch::Receiver<u64> {
        self.attempts_tx.subscribe()
    }

    /// Why the last refused reload was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads and logs the result; a failure keeps the old version serving.
    pub async fn reload_logged(&self) {
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

    /// Watches the plugin file and reloads it once a change has settled.
    ///
    /// A change counts once the file's size and modification time stayed the
    /// same for one whole `interval`, so a copy still in progress is not
    /// loaded; a file that is still broken after that is refused by
    /// validation and retried at its next change.
    pub fn watch(
        self: &Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let slot = self.clone();
        tokio::spawn(async move {
            let path = slot.spec.path.clone();
            // Start from the file as it was when loaded, so a change made
            // before this task first runs is not mistaken for the baseline.
            let mut seen = slot.current().loaded().file_stamp;
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
                        slot.reload_logged().await;
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

impl<P: Swappable> Slot<P> {
    /// The live version, counted as one more call of it.
    fn start_call(&self) -> Arc<P> {
        let plugin = self.current();
        // On the hot path: allocate the key only for a version's first call.
        let mut b = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        let version = &plugin.loaded().version;
        match b.get_mut(version) {
            Some(n) => *n += 1,
            None => {
                b.insert(version.clone(), 1);
            }
        }
        plugin
    }
}

/// What the host does with any slot, whatever it holds: show its version,
/// reload it, watch its file.
#[async_trait]
pub trait SlotControl: Send + Sync + 'static {
    /// The spec it was loaded from.
    fn spec(&self) -> &PluginSpec;
    /// The live version tag.
    fn version(&self) -> String;
    /// Watches the live version tag.
    fn subscribe(&self) -> watch::Receiver<String>;
    /// Calls started per version.
    fn batches_by_version(&self) -> BTreeMap<String, u64>;
    /// Reloads and logs the result; a failure keeps the old version serving.
    async fn reload_logged(&self);
    /// Watches the file and reloads it once a change has settled.
    fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>;
}

#[async_trait]
impl<P: Swappable> SlotControl for Slot<P> {
    fn spec(&self) -> &PluginSpec {
        Slot::spec(self)
    }
    fn version(&self) -> String {
        Slot::version(self)
    }
    fn subscribe(&self) -> watch::Receiver<String> {
        Slot::subscribe(self)
    }
    fn batches_by_version(&self) -> BTreeMap<String, u64> {
        Slot::batches_by_version(self)
    }
    async fn reload_logged(&self) {
        Slot::reload_logged(self).await
    }
    fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        Slot::watch(&self, interval, stop)
    }
}

#[async_trait]
impl BatchHandler for PluginSlot {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        self.start_call().call(batch).await
    }
}

#[async_trait]
impl Source for SourceSlot {
    async fn poll(&self, max: usize) -> Result<Vec<NewTask>, String> {
        self.start_call().poll(max).await
    }
}

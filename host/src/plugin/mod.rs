//! Plugin runtime: WASM components of the `handler-plugin` world as handlers.
//!
//! One [`Runtime`] (one wasmtime `Engine`) per process. A plugin file is
//! checked and compiled once at load; every batch then gets a fresh `Store`
//! and instance from the plugin's pre-linked `InstancePre`, so guest state
//! and memory never leak from one batch into the next, and a trap costs only
//! that batch. Guests get WASI p2 with no ambient authority: no environment,
//! no sockets, no files beyond the one directory a plugin is granted.

pub mod cache;
mod host;
pub mod swap;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::http::{AllowedHosts, HttpClient, HttpOptions, PluginHttp};

use self::cache::CodeCache;
use crate::pool::{BatchError, BatchHandler, Outcome};
use crate::queue::{QueueStore, Task};

/// Bindings generated from `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        // The superset of `handler-plugin`: linking its imports serves
        // components of either world.
        world: "bulk-handler-plugin",
        imports: { default: async },
        exports: { default: async },
        // Borrowed parameter types: a batch is lowered straight from the
        // host's tasks, without copying every payload first.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::BulkHandlerPluginPre as HandlerPluginPre;
use bindings::taskhost::plugin::types as wit;

/// How often the engine's epoch advances; the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each pooled memory and table kept mapped between instances when
/// the kernel can report which of them were dirtied.
const KEEP_RESIDENT_SCANNED: usize = 8 << 20;

/// The WIT world a handler plugin must implement.
pub const HANDLER_WORLD: &str = "taskhost:plugin/handler-plugin@0.1.0";

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a WebAssembly component.
    #[error("plugin {path} is not a WebAssembly component: {reason}")]
    NotComponent {
        /// The plugin file.
        path: PathBuf,
        /// What the file is instead.
        reason: String,
    },
    /// The component failed to compile.
    #[error("plugin {path} failed to compile: {reason}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
    /// The component does not fit the handler world.
    #[error("plugin {path} does not implement world {HANDLER_WORLD}: {reason}")]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// What is missing or mismatched.
        reason: String,
    },
    /// The granted directory cannot be used.
    #[error("plugin {name}: granted directory {path}: {reason}")]
    Grant {
        /// Plugin name.
        name: String,
        /// The host directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The plugin's limits do not fit the runtime.
    #[error("plugin {name}: limits: {reason}")]
    Limits {
        /// Plugin name.
        name: String,
        /// What is out of range.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The outbound HTTP client could not be set up.
    #[error("outbound HTTP: {0}")]
    Http(crate::http::TlsError),
}

/// A directory of the host a plugin may use, and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host; created if missing.
    pub host: PathBuf,
    /// Path under which the guest sees it.
    pub guest: String,
}

impl std::str::FromStr for DirGrant {
    type Err = String;

    /// Parses `HOST[:GUEST]`; the guest path defaults to `/data`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, guest) = match s.rsplit_once(':') {
            Some((h, g)) if g.starts_with('/') && !h.is_empty() => (h, g),
            _ => (s, "/data"),
        };
        if host.is_empty() {
            return Err(format!("directory grant {s:?} names no host directory"));
        }
        Ok(Self {
            host: host.into(),
            guest: guest.into(),
        })
    }
}

/// Resource limits applied to every call of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most linear memory one instance may grow to, in MiB.
    pub memory_mib: u64,
    /// Longest one `handle` call may run.
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    /// Bytes of guest stderr kept to explain a failed batch.
    pub stderr_bytes: usize,
    /// Bytes a plugin may log per call; later lines are dropped.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            time: Duration::from_secs(30),
            stderr_bytes: 16 * 1024,
            log_bytes: 256 * 1024,
        }
    }
}

/// Everything needed to load one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// Name used in logs.
    pub name: String,
    /// The `.wasm` component file.
    pub path: PathBuf,
    /// Values the plugin reads with `get-config`.
    pub config: BTreeMap<String, String>,
    /// The one directory the plugin may touch, if any.
    pub dir: Option<DirGrant>,
    /// Memory and time limits.
    pub limits: Limits,
    /// Hosts the plugin may reach over `wasi:http`; none means none at all.
    pub allowed_hosts: Vec<String>,
}

/// Engine-wide settings, fixed for the life of the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeOptions {
    /// Plugin instances alive at once across all pools (pooled slots).
    pub instances: u32,
    /// Upper bound for any plugin's `limits.memory_mib`.
    pub max_memory_mib: u64,
    /// Directory of compiled components; none disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The pooled client serving every plugin's outbound HTTP.
    pub http: HttpOptions,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            instances: 256,
            max_memory_mib: 4096,
            cache_dir: None,
            http: HttpOptions::default(),
        }
    }
}

/// The process-wide wasm engine and the thread that advances its epoch.
///
/// Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<BatchState>,
    cache: Option<CodeCache>,
    max_memory_mib: u64,
    http: Arc<HttpClient>,
    stop: Arc<AtomicBool>,
    ticker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Creates the engine with default options and starts the epoch ticker.
    pub fn new() -> Result<Self, PluginError> {
        Self::with_options(RuntimeOptions::default())
    }

    /// Creates the engine and starts the epoch ticker.
    pub fn with_options(opts: RuntimeOptions) -> Result<Self, PluginError> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true).wasm_component_model(true);
        // Pooled instance slots: a fresh instance per batch costs
        // microseconds, and fiber stacks and memories are reused instead of
        // mapped and unmapped on every call. A fresh instance must not pay a page fault for every page the
        // guest touches (stack, statics, heap: ~20 pages per batch for a
        // small Rust plugin). With PAGEMAP_SCAN (Linux >= 6.7) the pool
        // resets only the pages a batch dirtied and keeps them mapped, so a
        // large resident window is cheap; without it the whole window is
        // memset on every reuse, so it stays small.
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let keep_resident = if pagemap {
            KEEP_RESIDENT_SCANNED
        } else {
            64 << 10
        };
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(opts.instances)
            .total_core_instances(opts.instances.saturating_mul(4))
            .total_memories(opts.instances.saturating_mul(2))
            .total_tables(opts.instances.saturating_mul(4))
            .total_stacks(opts.instances)
            .max_memory_size(usize::try_from(opts.max_memory_mib << 20).unwrap_or(usize::MAX))
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident);
        if pagemap {
            pool.pagemap_scan(Enabled::Yes);
        }
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::BulkHandlerPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        // Before the epoch thread, which a failure here would leave running.
        let http = HttpClient::new(opts.http).map_err(PluginError::Http)?;
        // A plain thread, not a tokio task: if guests hog every runtime
        // thread, the epoch must still advance to interrupt them.
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("taskhost-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?
        };
        let cache = opts.cache_dir.map(|dir| CodeCache::new(dir, &engine));
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                max_memory_mib: opts.max_memory_mib,
                http,
                stop,
                ticker: std::sync::Mutex::new(Some(ticker)),
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The pooled HTTP client every plugin's outbound requests go through.
    pub fn http(&self) -> &Arc<HttpClient> {
        &self.inner.http
    }

    /// The linker holding every host import; other worlds (`source`) link
    /// against it too.
    pub(crate) fn linker(&self) -> &Linker<BatchState> {
        &self.inner.linker
    }

    /// The per-plugin parts a store needs, for plugins of other worlds.
    pub(crate) fn parts(&self, spec: &PluginSpec, queues: Arc<dyn QueueStore>) -> PluginParts {
        PluginParts {
            shared: Arc::new(host::PluginShared {
                name: spec.name.clone(),
                config: spec.config.clone(),
                queues,
            }),
            http: self.plugin_http(spec),
        }
    }

    fn plugin_http(&self, spec: &PluginSpec) -> PluginHttp {
        PluginHttp::new(
            &spec.name,
            AllowedHosts::new(&spec.allowed_hosts),
            self.inner.http.clone(),
        )
    }

    /// Checks, compiles (or takes from the cache) and links a plugin;
    /// refuses files of the wrong kind. Blocks while compiling: from async
    /// code use [`Runtime::load_async`].
    pub fn load(
        &self,
        spec: PluginSpec,
        queues: Arc<dyn QueueStore>,
    ) -> Result<Plugin, PluginError> {
        let (pre, loaded) = self.prepare(&spec, "", |c| {
            HandlerPluginPre::new(self.inner.linker.instantiate_pre(c)?)
        })?;
        let mut config = spec.config.clone();
        config.insert("taskhost.plugin".into(), spec.name.clone());
        config.insert("taskhost.version".into(), loaded.version.clone());
        Ok(Plugin {
            pre,
            http: self.plugin_http(&spec),
            shared: Arc::new(host::PluginShared {
                name: spec.name.clone(),
                config,
                queues,
            }),
            spec,
            loaded,
        })
    }

    /// Reads, checks, compiles (or takes from the cache) and links a
    /// component of any of our worlds with `link`, which refuses the wrong
    /// world; `world` names the expected one in that refusal.
    pub(crate) fn prepare<T>(
        &self,
        spec: &PluginSpec,
        world: &str,
        link: impl FnOnce(&Component) -> wasmtime::Result<T>,
    ) -> Result<(T, Loaded), PluginError> {
        let started = Instant::now();
        let path = spec.path.clone();
        if spec.limits.memory_mib > self.inner.max_memory_mib {
            return Err(PluginError::Limits {
                name: spec.name.clone(),
                reason: format!(
                    "memory_mib {} is above the runtime's max_memory_mib {}",
                    spec.limits.memory_mib, self.inner.max_memory_mib
                ),
            });
        }
        // Stamp before reading: a change racing the read shows up as a change.
        let file_stamp = std::fs::metadata(&path).ok().and_then(swap::from_metadata);
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Read {
            path: path.clone(),
            source,
        })?;
        check_component_header(&bytes).map_err(|reason| PluginError::NotComponent {
            path: path.clone(),
            reason,
        })?;
        let sha = cache::sha256_hex(&bytes);
        let engine = &self.inner.engine;
        let cached = self.inner.cache.as_ref().and_then(|c| c.get(engine, &sha));
        let (component, source) = match cached {
            Some(c) => (c, cache::Source::Cached),
            None => {
                let c = Component::new(engine, &bytes).map_err(|e| PluginError::Compile {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                })?;
                (c, cache::Source::Compiled)
            }
        };
        let linked = link(&component).map_err(|e| PluginError::WrongWorld {
            path: path.clone(),
            reason: if world.is_empty() {
                format!("{e:#}")
            } else {
                format!("not a {world}: {e:#}")
            },
        })?;
        // Only a component of the right world is worth caching.
        if source == cache::Source::Compiled
            && let Some(c) = &self.inner.cache
        {
            c.put(&sha, &component);
        }
        if let Some(grant) = &spec.dir {
            std::fs::create_dir_all(&grant.host).map_err(|e| PluginError::Grant {
                name: spec.name.clone(),
                path: grant.host.clone(),
                reason: e.to_string(),
            })?;
        }
        let version = sha[..12].to_owned();
        let load_time = started.elapsed();
        tracing::info!(
            plugin = %spec.name, %version, path = %path.display(), ?source, ?load_time,
            "plugin loaded"
        );
        Ok((
            linked,
            Loaded {
                version,
                sha256: sha,
                source,
                load_time,
                file_stamp,
            },
        ))
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

    /// Stops the epoch ticker and waits for it; time limits stop working.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl RuntimeInner {
    fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Tells a component from a core module or a file that is not wasm at all.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes {
        [m0, m1, m2, m3, _, _, 0x01, 0x00, ..] if [*m0, *m1, *m2, *m3] == MAGIC => Ok(()),
        [m0, m1, m2, m3, 0x01, 0x00, 0x00, 0x00, ..] if [*m0, *m1, *m2, *m3] == MAGIC => {
            Err("it is a core WebAssembly module; build it for wasm32-wasip2 or wrap it with `wasm-tools component new`".into())
        }
        _ if bytes.len() < 8 => Err(format!("the file is only {} bytes long", bytes.len())),
        _ => Err("it does not start with the WebAssembly magic number".into()),
    }
}

/// What every store of one plugin shares, whatever its world.
#[derive(Clone)]
pub(crate) struct PluginParts {
    shared: Arc<host::PluginShared>,
    http: PluginHttp,
}

impl PluginParts {
    /// A fresh store with the plugin's WASI, limits and time limit.
    pub(crate) fn store(
        &self,
        engine: &Engine,
        spec: &PluginSpec,
        queue: Arc<str>,
        stderr: MemoryOutputPipe,
    ) -> Result<Store<BatchState>, String> {
        new_store(engine, spec, &self.shared, &self.http, queue, stderr)
    }
}

/// A loaded plugin, ready to handle batches.
pub struct Plugin {
    pre: HandlerPluginPre<BatchState>,
    http: PluginHttp,
    spec: PluginSpec,
    shared: Arc<host::PluginShared>,
    loaded: Loaded,
}

/// What loading a component found out about it, whatever its world.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Short content hash: the first 12 hex digits of the SHA-256.
    pub version: String,
    /// Full SHA-256 of the file.
    pub sha256: String,
    /// Compiled at load or taken from the cache.
    pub source: cache::Source,
    /// How long loading took.
    pub load_time: Duration,
    /// The file's stamp when it was read (for the watcher).
    pub(crate) file_stamp: swap::Stamp,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("spec", &self.spec)
            .field("version", &self.loaded.version)
            .finish()
    }
}

/// Per-batch state of a store.
pub struct BatchState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    shared: Arc<host::PluginShared>,
    queue: Arc<str>,
    log_left: usize,
    http_ctx: WasiHttpCtx,
    http: PluginHttp,
}

impl WasiHttpView for BatchState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl WasiView for BatchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Plugin {
    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// Version tag: the first 12 hex digits of the component's SHA-256.
    pub fn version(&self) -> &str {
        &self.loaded.version
    }

    /// The component's full SHA-256.
    pub fn sha256(&self) -> &str {
        &self.loaded.sha256
    }

    /// Whether the code was compiled at load or taken from the cache.
    pub fn source(&self) -> cache::Source {
        self.loaded.source
    }

    /// How long loading took.
    pub fn load_time(&self) -> Duration {
        self.loaded.load_time
    }

    fn new_store(
        &self,
        queue: Arc<str>,
        stderr: MemoryOutputPipe,
    ) -> Result<Store<BatchState>, String> {
        new_store(
            self.pre.engine(),
            &self.spec,
            &self.shared,
            &self.http,
            queue,
            stderr,
        )
    }

    /// Creates and drops one fresh instance without calling it.
    pub async fn instantiate_only(&self) -> Result<(), BatchError> {
        let stderr = MemoryOutputPipe::new(self.spec.limits.stderr_bytes);
        let mut store = self.new_store(Arc::from(""), stderr).map_err(BatchError)?;
        self.pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| BatchError(format!("failed to instantiate: {}", root_cause(&e))))?;
        Ok(())
    }

    /// Runs one batch in a fresh instance.
    pub async fn call(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let stderr = MemoryOutputPipe::new(self.spec.limits.stderr_bytes);
        let mut store = self
            .new_store(first.queue.clone(), stderr.clone())
            .map_err(BatchError)?;
        let fail = |what: &str, e: wasmtime::Error| {
            let l = &self.spec.limits;
            // The limits in force go into the reason, so a dead letter says
            // whether a bigger limit would have helped.
            let mut msg = format!(
                "plugin {} version {} {what} (limits: {} MiB memory, {:?} per call): {}",
                self.spec.name,
                self.loaded.version,
                l.memory_mib,
                l.time,
                root_cause(&e)
            );
            let err = stderr.contents();
            if !err.is_empty() {
                let text = String::from_utf8_lossy(&err);
                msg.push_str("; stderr: ");
                msg.push_str(text.trim());
            }
            BatchError(msg)
        };
        let instance = self
            .pre
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

/// A fresh store: WASI without ambient authority, memory and time limits.
fn new_store(
    engine: &Engine,
    spec: &PluginSpec,
    shared: &Arc<host::PluginShared>,
    http: &PluginHttp,
    queue: Arc<str>,
    stderr: MemoryOutputPipe,
) -> Result<Store<BatchState>, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(g) = &spec.dir {
        wasi.preopened_dir(&g.host, &g.guest, FsPerms::ReadWrite)
            .map_err(|e| format!("cannot open granted directory {}: {e:#}", g.host.display()))?;
    }
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(spec.limits.memory_mib << 20).unwrap_or(usize::MAX))
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        BatchState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            shared: shared.clone(),
            queue,
            log_left: spec.limits.log_bytes,
            http_ctx: WasiHttpCtx::new(),
            http: http.clone(),
        },
    );
    store.limiter(|s| &mut s.limits);
    let limit = spec.limits.time;
    let started = Instant::now();
    store.set_epoch_deadline(1);
    // Yield at every tick so a busy guest shares the thread; trap once
    // the call has used up its time.
    store.epoch_deadline_callback(move |_| {
        if started.elapsed() >= limit {
            Err(wasmtime::Error::msg(format!(
                "time limit of {limit:?} exceeded"
            )))
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(store)
}

#[async_trait]
impl BatchHandler for Plugin {
    async fn handle(&self, batch: &[Task]) -> Result<Vec<Outcome>, BatchError> {
        self.call(batch).await
    }
}

/// The most telling part of a wasmtime error chain, on one line.
fn root_cause(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ").replace('\n', " ")
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

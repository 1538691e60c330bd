//! The process-wide wasm engine: pooling allocator, linker with every host
//! import, compiled-code cache, outbound HTTP client and the epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::cache::CodeCache;
use super::error::PluginError;
use super::limiter;
use super::spec::RuntimeOptions;
use super::store::CallState;
use crate::http::HttpClient;

/// How often the engine's epoch advances; the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each pooled memory and table kept mapped between instances when
/// the kernel can report which of them were dirtied.
const KEEP_RESIDENT_SCANNED: usize = 8 << 20;

/// The process-wide wasm engine and the thread that advances its epoch.
///
/// Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    pub(super) inner: Arc<RuntimeInner>,
}

pub(super) struct RuntimeInner {
    pub(super) engine: Engine,
    pub(super) linker: Linker<CallState>,
    pub(super) cache: Option<CodeCache>,
    pub(super) max_memory_mib: u64,
    pub(super) http: Arc<HttpClient>,
    /// Components compiled ahead of their load ([`Runtime::precompile`]),
    /// by content hash, with where their code came from.
    pub(super) warm: std::sync::Mutex<
        std::collections::HashMap<String, (wasmtime::component::Component, super::cache::Source)>,
    >,
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
        let engine = Engine::new(&engine_config(&opts))
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        // Before the epoch thread, which a failure here would leave running.
        let cache = opts
            .cache_dir
            .map(|dir| CodeCache::new(dir, &engine))
            .transpose()
            .map_err(PluginError::Engine)?;
        let http = HttpClient::new(opts.http).map_err(PluginError::Http)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = start_ticker(engine.clone(), stop.clone())
            .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                max_memory_mib: opts.max_memory_mib,
                http,
                warm: Default::default(),
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

    /// Stops the epoch ticker and waits for it; time limits stop working.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

/// Epoch interruption, the component model and pooled instance slots.
fn engine_config(opts: &RuntimeOptions) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true).wasm_component_model(true);
    // Pooled instance slots: a fresh instance per batch costs microseconds,
    // and fiber stacks and memories are reused instead of mapped and
    // unmapped on every call. A fresh instance must not pay a page fault
    // for every page the guest touches (stack, statics, heap: ~20 pages per
    // batch for a small Rust plugin). With PAGEMAP_SCAN (Linux >= 6.7) the
    // pool resets only the pages a batch dirtied and keeps them mapped, so
    // a large resident window is cheap; without it the whole window is
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
        // One component may not take more pooled slots than a call's
        // limiter lets it use (see `limiter`).
        .max_memories_per_component(limiter::MAX_MEMORIES as u32)
        .max_tables_per_component(limiter::MAX_TABLES as u32)
        .max_core_instances_per_component(limiter::MAX_CORE_INSTANCES as u32)
        .max_memory_size(usize::try_from(opts.max_memory_mib << 20).unwrap_or(usize::MAX))
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident);
    if pagemap {
        pool.pagemap_scan(Enabled::Yes);
    }
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// One linker for every world: WASI p2, our host imports, `wasi:http`.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::handler::BulkHandlerPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until `stop` is set.
fn start_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    // A plain thread, not a tokio task: if guests hog every runtime
    // thread, the epoch must still advance to interrupt them.
    std::thread::Builder::new()
        .name("taskhost-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
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

//! One store per call (a batch or a poll): WASI without ambient authority,
//! the plugin's memory and time limits, and its view of `wasi:http`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limiter::CallLimiter;
use super::spec::PluginSpec;
use crate::http::PluginHttp;
use crate::queue::QueueStore;

/// What the host grants one loaded plugin, shared by every store it gets:
/// its spec (directory, limits), the config it reads, the queues it may
/// enqueue to and its gate to outbound HTTP.
#[derive(Debug)]
pub(crate) struct PluginContext {
    pub spec: PluginSpec,
    /// What `get-config` answers.
    pub config: BTreeMap<String, String>,
    pub queues: Arc<dyn QueueStore>,
    /// Queues it may enqueue to besides the one of the running call.
    pub enqueue_to: BTreeSet<String>,
    pub http: PluginHttp,
}

/// The data of one store: one call of a plugin, whatever its world.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimiter,
    pub(super) ctx: Arc<PluginContext>,
    /// The queue of the running batch (or the source's queue): where an
    /// enqueue without a queue name goes, and the tag on log lines.
    pub(super) queue: Arc<str>,
    /// Bytes the plugin may still log in this call.
    pub(super) log_left: usize,
    /// Tasks and bytes enqueued so far in this call, against the batch caps.
    pub(super) enqueued: (usize, usize),
    http_ctx: WasiHttpCtx,
    http: PluginHttp,
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginContext {
    /// A fresh store: WASI without ambient authority, memory and time limits.
    pub(crate) fn store(
        self: &Arc<Self>,
        engine: &Engine,
        queue: Arc<str>,
        stderr: MemoryOutputPipe,
    ) -> Result<Store<CallState>, String> {
        let spec = &self.spec;
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(g) = &spec.dir {
            wasi.preopened_dir(&g.host, &g.guest, FsPerms::ReadWrite)
                .map_err(|e| {
                    format!("cannot open granted directory {}: {e:#}", g.host.display())
                })?;
        }
        let limits = CallLimiter::new(spec.limits.memory_mib);
        let mut store = Store::new(
            engine,
            CallState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limits,
                ctx: self.clone(),
                queue,
                log_left: spec.limits.log_bytes,
                enqueued: (0, 0),
                http_ctx: WasiHttpCtx::new(),
                http: self.http.clone(),
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
                Err(wasmtime::Error::new(super::limiter::LimitHit {
                    kind: crate::pool::timings::BatchResult::TimeLimit,
                    message: format!("time limit of {limit:?} exceeded"),
                }))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}

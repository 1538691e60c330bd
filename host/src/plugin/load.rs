//! Loading a component of any world: read, check, compile (or take from
//! the cache), link; and the loaded [`Plugin`] every world shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};

use super::cache;
use super::engine::Runtime;
use super::error::PluginError;
use super::handler::HandlerWorld;
use super::spec::PluginSpec;
use super::store::{CallState, PluginContext};
use super::swap;
use crate::http::{AllowedHosts, PluginHttp};
use crate::queue::QueueStore;
use crate::queue::util::lock;

/// A loaded plugin of world `W` (a handler unless said otherwise); every
/// call runs in a fresh instance.
pub struct Plugin<W = HandlerWorld> {
    /// The linked component, ready to instantiate, and what its world needs.
    pub(super) world: W,
    pub(super) ctx: Arc<PluginContext>,
    pub(super) info: LoadInfo,
}

/// What loading a component found out about it, whatever its world.
#[derive(Debug, Clone)]
pub struct LoadInfo {
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

impl<W> std::fmt::Debug for Plugin<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("spec", &self.ctx.spec)
            .field("version", &self.info.version)
            .finish()
    }
}

impl<W> Plugin<W> {
    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.ctx.spec
    }

    /// Version tag: the first 12 hex digits of the component's SHA-256.
    pub fn version(&self) -> &str {
        &self.info.version
    }

    /// The component's full SHA-256.
    pub fn sha256(&self) -> &str {
        &self.info.sha256
    }

    /// Whether the code was compiled at load or taken from the cache.
    pub fn source(&self) -> cache::Source {
        self.info.source
    }

    /// How long loading took.
    pub fn load_time(&self) -> Duration {
        self.info.load_time
    }

    /// What loading found out (hash, cache use, load time).
    pub fn load_info(&self) -> &LoadInfo {
        &self.info
    }
}

impl Runtime {
    /// Reads, checks, compiles (or takes from the cache) and links a
    /// component with `link`, which refuses the wrong world; `world` names
    /// the expected one in that refusal. `config` is what the plugin's
    /// `get-config` answers, given what loading found out.
    pub(super) fn load_world<W>(
        &self,
        spec: PluginSpec,
        world: &str,
        queues: Arc<dyn QueueStore>,
        link: impl FnOnce(&Linker<CallState>, &Component) -> wasmtime::Result<W>,
        config: impl FnOnce(&PluginSpec, &LoadInfo) -> BTreeMap<String, String>,
    ) -> Result<Plugin<W>, PluginError> {
        let (world, info) = self.prepare(&spec, world, link)?;
        let http = PluginHttp::new(
            &spec.name,
            AllowedHosts::new(&spec.allowed_hosts),
            self.inner.http.clone(),
        );
        let ctx = Arc::new(PluginContext {
            config: config(&spec, &info),
            enqueue_to: spec.enqueue_grants(),
            spec,
            queues,
            http,
        });
        Ok(Plugin { world, ctx, info })
    }

    /// Compiles the component at `path` (or takes it from the cache) ahead
    /// of its load, so that the work runs beside other start-up work; the
    /// next load of the same bytes uses it. Failures are left for the load
    /// to report.
    pub fn precompile(&self, path: &std::path::Path) {
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        if check_component_header(&bytes).is_err() {
            return;
        }
        let sha = cache::sha256_hex(&bytes);
        if let Ok(found) = self.component(&sha, &bytes) {
            lock(&self.inner.warm).insert(sha, found);
        }
    }

    /// The component of `bytes` (hash `sha`): from the code cache, or
    /// compiled now.
    fn component(&self, sha: &str, bytes: &[u8]) -> wasmtime::Result<(Component, cache::Source)> {
        let engine = &self.inner.engine;
        if let Some(c) = self.inner.cache.as_ref().and_then(|c| c.get(engine, sha)) {
            return Ok((c, cache::Source::Cached));
        }
        Ok((Component::new(engine, bytes)?, cache::Source::Compiled))
    }

    fn prepare<W>(
        &self,
        spec: &PluginSpec,
        world: &str,
        link: impl FnOnce(&Linker<CallState>, &Component) -> wasmtime::Result<W>,
    ) -> Result<(W, LoadInfo), PluginError> {
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
        let warm = lock(&self.inner.warm).remove(&sha);
        let (component, source) = match warm {
            Some(found) => found,
            None => self
                .component(&sha, &bytes)
                .map_err(|e| PluginError::Compile {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                })?,
        };
        let linked = link(&self.inner.linker, &component).map_err(|e| PluginError::WrongWorld {
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
            LoadInfo {
                version,
                sha256: sha,
                source,
                load_time,
                file_stamp,
            },
        ))
    }
}

/// Tells a component from a core module or a file that is not wasm at all.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes {
        [m0, m1, m2, m3, _, _, 0x01, 0x00, ..] if [*m0, *m1, *m2, *m3] == MAGIC => Ok(()),
        [m0, m1, m2, m3, 0x01, 0x00, 0x00, 0x00, ..] if [*m0, *m1, *m2, *m3] == MAGIC => Err(
            "it is a core WebAssembly module, not a component; turn it into one with \
                 `host componentize CORE.wasm -o PLUGIN.wasm` (or build for wasm32-wasip2)"
                .into(),
        ),
        _ if bytes.len() < 8 => Err(format!("the file is only {} bytes long", bytes.len())),
        _ => Err("it does not start with the WebAssembly magic number".into()),
    }
}

//! What a plugin is loaded from: its spec, grants and limits, and the
//! engine-wide options.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::HttpOptions;

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
    /// Most linear memory one instance may grow to, all its memories
    /// together, in MiB.
    pub memory_mib: u64,
    /// Longest one `handle` call may run.
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    /// Bytes of guest stderr kept to explain a failed batch.
    pub stderr_bytes: usize,
    /// Bytes a plugin may log per call; later lines are dropped.
    pub log_bytes: usize,
    /// Tasks one `enqueue-many` may hand over; a longer list is refused whole.
    pub enqueue_call_tasks: usize,
    /// Bytes (payloads and unique keys) one `enqueue`/`enqueue-many` may
    /// hand over; more is refused whole.
    pub enqueue_call_bytes: usize,
    /// Tasks a plugin may enqueue in one batch (or poll), all calls together.
    pub enqueue_batch_tasks: usize,
    /// Bytes a plugin may enqueue in one batch (or poll), all calls together.
    pub enqueue_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            time: Duration::from_secs(30),
            stderr_bytes: 16 * 1024,
            log_bytes: 256 * 1024,
            enqueue_call_tasks: 1_000,
            enqueue_call_bytes: 32 << 20,
            enqueue_batch_tasks: 10_000,
            enqueue_batch_bytes: 128 << 20,
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
    /// Queues the plugin may enqueue to besides its own; `None` grants the
    /// queues its config names as outputs (see [`PluginSpec::enqueue_grants`]).
    pub enqueue_to: Option<Vec<String>>,
}

/// Config keys whose values name a plugin's output queues: `results`,
/// `queue`, and any key ending in `_queue` (`output_queue`, ...).
fn is_output_key(key: &str) -> bool {
    key == "results" || key == "queue" || key.ends_with("_queue")
}

impl PluginSpec {
    /// The queues this plugin may enqueue to besides the one it serves:
    /// `enqueue_to` when given, else the values of its output config keys.
    pub fn enqueue_grants(&self) -> std::collections::BTreeSet<String> {
        match &self.enqueue_to {
            Some(list) => list.iter().cloned().collect(),
            None => self
                .config
                .iter()
                .filter(|(k, v)| is_output_key(k) && !v.is_empty())
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }
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

//! Host configuration: a TOML file with documented defaults.
//!
//! Every field has a default, so an empty file (or none) is a valid
//! configuration; the command line overrides what the file says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugin::{DirGrant, Limits, PluginSpec};
use crate::pool::PoolConfig;
use crate::queue::disk::DiskOptions;
use crate::queue::memory::MemoryOptions;
use crate::queue::postgres::PostgresOptions;
use crate::queue::redis::RedisOptions;
use crate::queue::{Backend, BackendConfig};

/// One plugin and the queue it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name in logs; defaults to the file name without `.wasm`.
    #[serde(default)]
    pub name: Option<String>,
    /// The component file.
    pub path: PathBuf,
    /// The queue it takes tasks from.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The one host directory it may use.
    #[serde(default)]
    pub dir: Option<DirGrant>,
    /// Values it reads with `get-config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Memory and time limits per call.
    #[serde(default)]
    pub limits: Limits,
    /// Hosts the plugin may reach over HTTP (`host`, `host:port`, `*.domain`);
    /// none means no outbound request at all.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Queues it may enqueue to besides its own; unset: the queues its
    /// config names as outputs (`results`, `queue`, `*_queue` keys).
    #[serde(default)]
    pub enqueue_to: Option<Vec<String>>,
    /// Batching, workers, retries.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// A configured name, else the file name without its extension.
fn name_or_stem(name: &Option<String>, path: &Path, fallback: &str) -> String {
    name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| fallback.into())
    })
}

fn default_queue() -> String {
    "default".into()
}

impl PluginConfig {
    /// A plugin at `path` with every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            name: None,
            path: path.into(),
            queue: default_queue(),
            dir: None,
            config: BTreeMap::new(),
            limits: Limits::default(),
            allowed_hosts: Vec::new(),
            enqueue_to: None,
            pool: PoolConfig::default(),
        }
    }

    /// The name used in logs.
    pub fn display_name(&self) -> String {
        name_or_stem(&self.name, &self.path, "plugin")
    }

    /// What the plugin runtime needs to load it.
    pub fn spec(&self) -> PluginSpec {
        PluginSpec {
            name: self.display_name(),
            path: self.path.clone(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            limits: self.limits,
            allowed_hosts: self.allowed_hosts.clone(),
            enqueue_to: self.enqueue_to.clone(),
        }
    }
}

/// One source plugin: polled by the host, its tasks enqueued on `queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePluginConfig {
    /// Name in logs; defaults to the file name without `.wasm`.
    #[serde(default)]
    pub name: Option<String>,
    /// The component file (world `source-plugin`).
    pub path: PathBuf,
    /// The queue its tasks go to.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Values it reads with `get-config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Memory and time limits per poll.
    #[serde(default)]
    pub limits: Limits,
    /// Hosts it may reach over HTTP; none means no outbound request at all.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Queues it may enqueue to besides its own; unset: the queues its
    /// config names as outputs (`results`, `queue`, `*_queue` keys).
    #[serde(default)]
    pub enqueue_to: Option<Vec<String>>,
    /// Poll schedule and capacity.
    #[serde(default)]
    pub poll: crate::source::SourceConfig,
}

impl SourcePluginConfig {
    /// The name used in logs.
    pub fn display_name(&self) -> String {
        name_or_stem(&self.name, &self.path, "source")
    }

    /// What the plugin runtime needs to load it.
    pub fn spec(&self) -> PluginSpec {
        PluginSpec {
            name: self.display_name(),
            path: self.path.clone(),
            config: self.config.clone(),
            dir: None,
            limits: self.limits,
            allowed_hosts: self.allowed_hosts.clone(),
            enqueue_to: self.enqueue_to.clone(),
        }
    }
}

/// Engine-wide plugin runtime settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Plugin instances alive at once across all pools.
    pub instances: u32,
    /// Upper bound for any plugin's `limits.memory_mib`.
    pub max_memory_mib: u64,
    /// Keep compiled components on disk so a restart does not recompile.
    pub cache: bool,
    /// Where compiled components are kept [default: DATA_DIR/cache].
    pub cache_dir: Option<PathBuf>,
    /// Watch plugin files and swap in new versions while running.
    pub watch: bool,
    /// How often plugin files are checked; a change is loaded once the file
    /// stayed unchanged for one interval.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let d = crate::plugin::RuntimeOptions::default();
        Self {
            instances: d.instances,
            max_memory_mib: d.max_memory_mib,
            cache: true,
            cache_dir: None,
            watch: true,
            watch_interval: Duration::from_millis(250),
        }
    }
}

/// The whole host configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Where the disk backend keeps its database.
    pub data_dir: PathBuf,
    /// Which backend holds the queues.
    pub backend: Backend,
    /// Disk backend settings.
    pub disk: DiskOptions,
    /// Memory backend settings.
    pub memory: MemoryOptions,
    /// Plugin runtime settings.
    pub runtime: RuntimeConfig,
    /// Server of the redis or postgres backend,
    /// `redis://[:password@]host:port/db` or `postgres://user:pass@host:port/db`.
    pub queue_url: Option<String>,
    /// Redis backend settings.
    pub redis: RedisOptions,
    /// PostgreSQL backend settings.
    pub postgres: PostgresOptions,
    /// Plugins to run, each on its own queue.
    pub plugins: Vec<PluginConfig>,
    /// The pooled client serving plugins' outbound HTTP.
    pub http: crate::http::HttpOptions,
    /// Source plugins the host polls for tasks, one poller each.
    pub sources: Vec<SourcePluginConfig>,
    /// The HTTP listener (producer API, operator API, `/metrics`).
    pub api: crate::api::ApiConfig,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("taskhost-data"),
            backend: Backend::Disk,
            disk: DiskOptions::default(),
            memory: MemoryOptions::default(),
            runtime: RuntimeConfig::default(),
            queue_url: None,
            redis: RedisOptions::default(),
            postgres: PostgresOptions::default(),
            plugins: Vec::new(),
            http: crate::http::HttpOptions::default(),
            sources: Vec::new(),
            api: crate::api::ApiConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

impl HostConfig {
    /// The plugin runtime options these settings describe.
    pub fn runtime_options(&self) -> crate::plugin::RuntimeOptions {
        crate::plugin::RuntimeOptions {
            instances: self.runtime.instances,
            max_memory_mib: self.runtime.max_memory_mib,
            cache_dir: self.runtime.cache.then(|| {
                self.runtime
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("cache"))
            }),
            http: self.http.clone(),
        }
    }

    /// The queue backend these settings choose, with its settings.
    pub fn queue_backend(&self) -> Result<BackendConfig, ConfigError> {
        Ok(match self.backend {
            Backend::Disk => BackendConfig::Disk {
                data_dir: self.data_dir.clone(),
                options: self.disk.clone(),
            },
            Backend::Memory => BackendConfig::Memory(self.memory.clone()),
            Backend::Redis => BackendConfig::Redis {
                url: self.queue_url.clone().ok_or_else(|| {
                    ConfigError::Invalid(
                        "backend redis needs a queue URL (--queue-url redis://host:port/db)".into(),
                    )
                })?,
                options: self.redis.clone(),
            },
            Backend::Postgres => BackendConfig::Postgres {
                url: self.queue_url.clone().ok_or_else(|| {
                    ConfigError::Invalid(
                        "backend postgres needs a queue URL (--queue-url postgres://user@host:port/db)"
                            .into(),
                    )
                })?,
                options: self.postgres.clone(),
            },
        })
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// Checks values the host cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut queues = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            // Named as the field is written in the file: plugins[0].pool.batch_size.
            let name = p.display_name();
            p.pool
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("plugins[{i}] ({name}): pool.{e}")))?;
            if p.limits.memory_mib == 0 {
                return Err(ConfigError::Invalid(format!(
                    "plugins[{i}] ({name}): limits.memory_mib must be at least 1"
                )));
            }
            for q in p.enqueue_to.iter().flatten() {
                crate::queue::validate_name(q)
                    .map_err(|e| ConfigError::Invalid(format!("plugin {name}: enqueue_to: {e}")))?;
            }
            if !queues.insert(p.queue.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "two plugins serve queue {:?}; give each its own queue",
                    p.queue
                )));
            }
        }
        self.api.validate().map_err(ConfigError::Invalid)?;
        self.check_grants_spare_host_state()?;
        match (self.backend, &self.queue_url) {
            (Backend::Redis, None) => {
                return Err(ConfigError::Invalid(
                    "backend redis needs queue_url = \"redis://host:port/db\" (or --queue-url)"
                        .into(),
                ));
            }
            (Backend::Postgres, None) => {
                return Err(ConfigError::Invalid(
                    "backend postgres needs queue_url = \"postgres://user@host:port/db\" (or --queue-url)"
                        .into(),
                ));
            }
            (Backend::Disk | Backend::Memory, Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "queue_url is set but backend is {:?}; set backend = \"redis\" or remove queue_url",
                    self.backend
                )));
            }
            _ => {}
        }
        if self.redis.capacity == Some(0) || self.redis.dead_capacity == 0 {
            return Err(ConfigError::Invalid(
                "redis.capacity and redis.dead_capacity must be at least 1".into(),
            ));
        }
        self.postgres
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.memory.capacity == 0 {
            return Err(ConfigError::Invalid(
                "memory.capacity must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl HostConfig {
    /// Refuses a plugin `dir` grant that holds the data directory or the
    /// compiled-code cache, or lies inside the cache: a plugin could then
    /// rewrite the queue database or plant native code. A subdirectory of
    /// the data directory (the archive's default) is fine.
    fn check_grants_spare_host_state(&self) -> Result<(), ConfigError> {
        let data = normalize(&self.data_dir);
        let cache = self.runtime_options().cache_dir.map(|c| normalize(&c));
        for p in &self.plugins {
            let Some(grant) = &p.dir else { continue };
            let g = normalize(&grant.host);
            let clash = if data.starts_with(&g) {
                Some(format!("holds data_dir {}", self.data_dir.display()))
            } else {
                cache
                    .as_ref()
                    .filter(|c| c.starts_with(&g) || g.starts_with(c))
                    .map(|c| format!("overlaps the compiled-code cache {}", c.display()))
            };
            if let Some(clash) = clash {
                return Err(ConfigError::Invalid(format!(
                    "plugin {}: dir {} {clash}; grant a directory of its own",
                    p.display_name(),
                    grant.host.display()
                )));
            }
        }
        Ok(())
    }
}

/// An absolute path with `.` and `..` resolved, through symlinks where it
/// exists, lexically where it does not yet.
fn normalize(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;

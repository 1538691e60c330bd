//! Choosing a backend: the one place that knows every backend by name.
//!
//! A new backend is a folder beside `disk/` and `redis/`, a variant of
//! [`Backend`] and [`BackendConfig`], an arm in [`open`], and a line in the
//! conformance list.

use std::path::PathBuf;
use std::sync::Arc;

use super::disk::{self, DiskOptions, DiskStore};
use super::memory::{MemoryOptions, MemoryStore};
use super::postgres::{PostgresOptions, PostgresStore};
use super::redis::{self, RedisOptions, RedisStore};
use super::{QueueError, QueueStore};
use crate::clock::Clock;

/// Which queue backend holds the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded on-disk queue (SQLite) in the data directory: persistent.
    #[default]
    Disk,
    /// In-process bounded queue: fastest, lost when the process ends.
    Memory,
    /// Redis at `queue_url`: many hosts share the queues.
    Redis,
    /// PostgreSQL at `queue_url`: many hosts share the queues.
    Postgres,
}

impl Backend {
    /// The backend a queue URL names: `postgres://` and `postgresql://`
    /// are PostgreSQL, anything else Redis (whose client names a bad scheme).
    pub fn for_url(url: &str) -> Self {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Backend::Postgres,
            _ => Backend::Redis,
        }
    }
}

/// One backend and its settings: what [`open`] needs.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    /// SQLite database in `data_dir`.
    Disk {
        /// The directory holding the database file.
        data_dir: PathBuf,
        /// Disk settings.
        options: DiskOptions,
    },
    /// Queues inside this process.
    Memory(MemoryOptions),
    /// Queues in the Redis database at `url`.
    Redis {
        /// `redis://[:password@]host:port/db`.
        url: String,
        /// Redis settings.
        options: RedisOptions,
    },
    /// Queues in the PostgreSQL database at `url`.
    Postgres {
        /// `postgres://user:pass@host:port/db`.
        url: String,
        /// PostgreSQL settings.
        options: PostgresOptions,
    },
}

impl BackendConfig {
    /// Whether the backend holds a store already: false only for a disk
    /// backend that never held one (a server is asked when opened; a disk
    /// store whose file vanished is refused when opened).
    pub fn exists(&self) -> bool {
        match self {
            BackendConfig::Disk { data_dir, .. } => {
                data_dir.join(disk::DB_FILE).exists() || data_dir.join(disk::MARKER_FILE).exists()
            }
            BackendConfig::Memory(_)
            | BackendConfig::Redis { .. }
            | BackendConfig::Postgres { .. } => true,
        }
    }
}

impl std::fmt::Display for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendConfig::Disk { data_dir, .. } => {
                write!(f, "the disk queue in {}", data_dir.display())
            }
            BackendConfig::Memory(_) => f.write_str("the memory queues"),
            BackendConfig::Redis { url, .. } => {
                write!(f, "the redis queues at {}", redis::redact(url))
            }
            BackendConfig::Postgres { url, .. } => {
                write!(f, "the postgres queues at {}", redis::redact(url))
            }
        }
    }
}

/// Opens the backend `cfg` names; its queues read `clock`.
///
/// Must be called inside a tokio runtime (remote backends reconnect there).
/// Close the store with [`QueueStore::close`] when done.
pub fn open(cfg: &BackendConfig, clock: Arc<dyn Clock>) -> Result<Arc<dyn QueueStore>, QueueError> {
    Ok(match cfg {
        BackendConfig::Disk { data_dir, options } => {
            Arc::new(DiskStore::open(data_dir, options.clone(), clock)?)
        }
        BackendConfig::Memory(options) => Arc::new(MemoryStore::new(options.clone(), clock)),
        BackendConfig::Redis { url, options } => {
            Arc::new(RedisStore::open(url, options.clone(), clock)?)
        }
        BackendConfig::Postgres { url, options } => {
            Arc::new(PostgresStore::open(url, options.clone(), clock)?)
        }
    })
}

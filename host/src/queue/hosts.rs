//! The host registry: which hosts serve a backend's queues, and the proof
//! that a lease's holder is gone.
//!
//! Every running host registers itself ([`HostRegistry::heartbeat`], again
//! every few seconds) and every lease it takes from then on records it as
//! holder. A lease whose holder is provably gone is made visible again at
//! once ([`HostRegistry::reclaim_gone`]) instead of after its `lease_ttl`:
//! on disk a host is gone when the lock of its run file is free (see
//! `crate::registry`), on Redis when its heartbeat key expired (or, for a
//! host of this machine and data directory, when its run-file lock is free).
//! A reclaimed lease is taken from its holder, so a holder that was wrongly
//! thought gone can neither renew nor settle it: its tasks are redelivered,
//! never lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::QueueError;
use super::util::lock;

/// One host as the registry shows it (also what its run file holds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Unique per process: `<machine>-<pid>-<random>`; leases name it.
    #[serde(default)]
    pub id: String,
    /// The machine's host name.
    #[serde(default)]
    pub machine: String,
    /// Process id on that machine.
    pub pid: u32,
    /// When the host started, ms since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: u64,
    /// The host's data directory (run files, code cache).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// When the host last said it is alive, ms since the Unix epoch.
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// Plugins with their live versions and workers.
    pub plugins: Vec<HostPlugin>,
}

/// One plugin of a running host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostPlugin {
    /// Plugin name.
    pub name: String,
    /// Queue served.
    pub queue: String,
    /// Component file.
    pub path: PathBuf,
    /// Live version tag.
    pub version: String,
    /// Batches started per version.
    pub batches_by_version: BTreeMap<String, u64>,
    /// Workers running a batch now.
    #[serde(default)]
    pub busy_workers: usize,
    /// Most workers the pool runs at once (0 for a source).
    #[serde(default)]
    pub max_workers: usize,
}

/// The hosts serving one backend; every persistent backend has one.
#[async_trait]
pub trait HostRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Registers `me` or renews its registration; leases this store hands
    /// out from now on record `me.id` as their holder.
    async fn heartbeat(&self, me: &HostInfo) -> Result<(), QueueError>;

    /// Leaves the registry (a clean shutdown, after every lease was settled).
    async fn deregister(&self, id: &str) -> Result<(), QueueError>;

    /// Every live host on the backend, sorted by machine and pid.
    async fn hosts(&self) -> Result<Vec<HostInfo>, QueueError>;

    /// Makes every lease whose holder is provably gone visible again now;
    /// returns how many tasks came back.
    async fn reclaim_gone(&self) -> Result<u64, QueueError>;

    /// Asks every live host to reload its plugins; returns how many were asked.
    async fn request_reload(&self) -> Result<usize, QueueError>;

    /// Sends one `()` on `tx` per reload request that reaches this host
    /// through the backend, until `stop`. Backends without such a channel
    /// (disk: `host reload` sends SIGHUP) just wait for `stop`.
    async fn listen_for_reloads(&self, tx: mpsc::Sender<()>, stop: CancellationToken) {
        let _ = tx;
        stop.cancelled().await;
    }
}

/// The registry of a backend that lives inside one process (memory): it
/// knows only this process.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    me: Mutex<Option<HostInfo>>,
}

#[async_trait]
impl HostRegistry for LocalRegistry {
    async fn heartbeat(&self, me: &HostInfo) -> Result<(), QueueError> {
        *lock(&self.me) = Some(me.clone());
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), QueueError> {
        let mut me = lock(&self.me);
        if me.as_ref().is_some_and(|m| m.id == id) {
            *me = None;
        }
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostInfo>, QueueError> {
        Ok(lock(&self.me).iter().cloned().collect())
    }

    async fn reclaim_gone(&self) -> Result<u64, QueueError> {
        // Every lease of an in-process queue is held by this process.
        Ok(0)
    }

    async fn request_reload(&self) -> Result<usize, QueueError> {
        Ok(0)
    }
}

/// Whether host `other`, still registered, is provably gone all the same:
/// it ran on the machine and data directory of `me` (this host) and its
/// run-file lock is free. That lets a restart pick up the leases of the
/// process it replaces without waiting for a registration to expire.
pub(crate) async fn gone_locally(me: Option<&HostInfo>, other: &HostInfo) -> bool {
    let Some(me) = me else { return false };
    let (Some(dir), Some(mine)) = (other.data_dir.clone(), me.data_dir.as_ref()) else {
        return false;
    };
    if other.machine != me.machine || &dir != mine {
        return false;
    }
    let id = other.id.clone();
    tokio::task::spawn_blocking(move || crate::registry::run_file_released(&dir, &id))
        .await
        .unwrap_or(false)
}

/// Sorts hosts for people: by machine, then pid.
pub(crate) fn sort_hosts(hosts: &mut [HostInfo]) {
    hosts.sort_by(|a, b| (&a.machine, a.pid, &a.id).cmp(&(&b.machine, b.pid, &b.id)));
}

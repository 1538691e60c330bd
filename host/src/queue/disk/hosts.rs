//! The disk backend's host registry: the run files and their locks in the
//! data directory (`crate::registry`) are the registrations, and a lease's
//! holder is gone when no run file of a live host names it.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::DiskStore;
use super::writer::Request;
use crate::queue::hosts::sort_hosts;
use crate::queue::util::lock;
use crate::queue::{HostInfo, HostRegistry, QueueError};
use crate::registry;

/// The hosts registered in the data directory of one [`DiskStore`].
#[derive(Debug)]
pub struct DiskRegistry {
    store: Arc<DiskStore>,
    data_dir: PathBuf,
}

impl DiskRegistry {
    /// The registry of the data directory holding `store`'s database.
    pub fn new(store: Arc<DiskStore>) -> Self {
        let data_dir = store
            .path()
            .parent()
            .map(|p| p.to_owned())
            .unwrap_or_default();
        Self { store, data_dir }
    }

    /// Runs a file-system look at the run files off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(PathBuf) -> T + Send + 'static,
    ) -> Result<T, QueueError> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || f(dir))
            .await
            .map_err(|e| QueueError::Config(format!("reading the run files failed: {e}")))
    }
}

#[async_trait]
impl HostRegistry for DiskRegistry {
    async fn heartbeat(&self, me: &HostInfo) -> Result<(), QueueError> {
        // The run file (written by the host, lock held) is the registration.
        *lock(&self.store.holder) = Some(me.id.as_str().into());
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), QueueError> {
        let mut holder = lock(&self.store.holder);
        if holder.as_deref() == Some(id) {
            *holder = None;
        }
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostInfo>, QueueError> {
        let mut hosts = self.blocking(|dir| registry::live_hosts(&dir)).await?;
        sort_hosts(&mut hosts);
        Ok(hosts)
    }

    async fn reclaim_gone(&self) -> Result<u64, QueueError> {
        let holders = self.store.call(|reply| Request::Holders { reply }).await?;
        if holders.is_empty() {
            return Ok(0);
        }
        let me = lock(&self.store.holder).clone();
        let gone = self
            .blocking(move |dir| {
                holders
                    .into_iter()
                    .filter(|h| me.as_deref() != Some(h.as_str()))
                    .filter(|h| registry::holder_gone(&dir, h))
                    .collect::<Vec<_>>()
            })
            .await?;
        if gone.is_empty() {
            return Ok(0);
        }
        let n = self
            .store
            .call(|reply| Request::Reclaim {
                holders: gone.clone(),
                reply,
            })
            .await?;
        if n > 0 {
            tracing::info!(tasks = n, hosts = ?gone, "reclaimed the leases of hosts that are gone");
        }
        Ok(n)
    }

    async fn request_reload(&self) -> Result<usize, QueueError> {
        self.blocking(|dir| {
            let hosts = registry::live_hosts(&dir);
            let mut asked = 0;
            for h in &hosts {
                match registry::signal_reload(h) {
                    Ok(()) => asked += 1,
                    Err(e) => tracing::warn!(pid = h.pid, error = %e, "cannot signal host"),
                }
            }
            asked
        })
        .await
    }
}

//! The Redis backend's host registry.
//!
//! A host's registration is the key `taskhost:host:<id>` (its JSON
//! [`HostInfo`]) with a TTL of [`HEARTBEAT_TTL`], renewed by every
//! heartbeat, and its id in the set `taskhost:hosts`. A host whose key
//! expired is gone: its batches on every queue are reclaimed at once
//! (`scripts/reclaim.lua`) and its id leaves the set. A host of this
//! machine and data directory whose run-file lock is free is gone too,
//! without waiting for its key to expire: that is what lets a restart pick
//! up the leases of the process it replaces at once.
//!
//! `host reload` publishes on `taskhost:reload`; every host listens.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::script::{array, int};
use super::{Shared, keys};
use crate::backoff::Reconnect;
use crate::queue::hosts::{gone_locally, sort_hosts};
use crate::queue::util::lock;
use crate::queue::{HostInfo, HostRegistry, QueueError};

/// How long a registration lives without a heartbeat.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Most reclaim calls per queue and gone host in one pass (each moves at
/// most the script budget); the rest waits for the next pass.
const RECLAIM_CALLS: usize = 1_000;

/// The hosts registered in one Redis database.
#[derive(Debug)]
pub struct RedisRegistry {
    shared: Arc<Shared>,
}

impl RedisRegistry {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn conn(&self) -> super::conn::Conn {
        self.shared.conn.clone()
    }

    /// The registrations of `ids` (None where the key expired).
    async fn infos(&self, ids: &[String]) -> Result<Vec<Option<HostInfo>>, QueueError> {
        let mut out = Vec::with_capacity(ids.len());
        // One GET each: the keys may sit in different cluster slots.
        for id in ids {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(keys::host(id))
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.shared.error(e))?;
            out.push(v.and_then(|b| serde_json::from_slice::<HostInfo>(&b).ok()));
        }
        Ok(out)
    }

    /// Removes host `id`'s registration (two commands: on a cluster its
    /// key and the set sit in different slots).
    async fn forget(&self, id: &str) -> Result<(), QueueError> {
        redis::cmd("DEL")
            .arg(keys::host(id))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        redis::cmd("SREM")
            .arg(keys::HOSTS)
            .arg(id)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))
    }

    /// Whether host `other`, registered and not expired, is provably gone
    /// all the same (see [`gone_locally`]).
    async fn gone_locally(&self, other: &HostInfo) -> bool {
        let me = lock(&self.shared.me).clone();
        gone_locally(me.as_ref(), other).await
    }

    /// Moves every batch `host` holds on queue `queue` (each shard) back to `ready`.
    async fn reclaim_queue(&self, queue: &str, host: &str) -> Result<u64, QueueError> {
        let n = self.shared.layout(queue).await?;
        let mut moved = 0;
        for i in 0..n {
            moved += self
                .reclaim_shard(queue, &keys::shard_prefix(queue, i, n), host)
                .await?;
        }
        Ok(moved)
    }

    /// Moves every batch `host` holds under `prefix` back to `ready`.
    async fn reclaim_shard(
        &self,
        queue: &str,
        prefix: &str,
        host: &str,
    ) -> Result<u64, QueueError> {
        let opts = &self.shared.opts;
        let mut moved = 0;
        for _ in 0..RECLAIM_CALLS {
            let mut inv = self.shared.call(&self.shared.scripts.reclaim, prefix);
            inv.arg(host)
                .arg(opts.script_elements)
                .arg(opts.script_bytes);
            let v = self.shared.run(&inv).await?;
            let r = array(v).map_err(|v| QueueError::Redis {
                url: self.shared.url.clone(),
                message: format!("unexpected reply to reclaim on queue {queue:?}: {v:?}"),
            })?;
            let (m, left) = (
                r.first().and_then(int).unwrap_or(0),
                r.get(1).and_then(int).unwrap_or(0),
            );
            moved += m.max(0) as u64;
            if left <= 0 {
                break;
            }
        }
        Ok(moved)
    }
}

#[async_trait]
impl HostRegistry for RedisRegistry {
    async fn heartbeat(&self, me: &HostInfo) -> Result<(), QueueError> {
        *lock(&self.shared.holder) = Some(me.id.as_str().into());
        *lock(&self.shared.me) = Some(me.clone());
        let json = serde_json::to_vec(me)
            .map_err(|e| QueueError::Config(format!("cannot encode host registration: {e}")))?;
        // Two commands, not a pipeline: on a cluster the keys sit in
        // different slots. The key first, so the set never names a live
        // host without one (that is how a gone host looks).
        redis::cmd("SET")
            .arg(keys::host(&me.id))
            .arg(json)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        redis::cmd("SADD")
            .arg(keys::HOSTS)
            .arg(&me.id)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))
    }

    async fn deregister(&self, id: &str) -> Result<(), QueueError> {
        {
            let mut holder = lock(&self.shared.holder);
            if holder.as_deref() == Some(id) {
                *holder = None;
            }
        }
        self.forget(id).await
    }

    async fn hosts(&self) -> Result<Vec<HostInfo>, QueueError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::HOSTS)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        let mut hosts: Vec<HostInfo> = self.infos(&ids).await?.into_iter().flatten().collect();
        sort_hosts(&mut hosts);
        Ok(hosts)
    }

    async fn reclaim_gone(&self) -> Result<u64, QueueError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::HOSTS)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        let mine = lock(&self.shared.holder).clone();
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| mine.as_deref() != Some(id.as_str()))
            .collect();
        let mut gone = Vec::new();
        for (id, info) in ids.iter().zip(self.infos(&ids).await?) {
            match info {
                None => gone.push(id.clone()),
                Some(info) if self.gone_locally(&info).await => gone.push(id.clone()),
                Some(_) => {}
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        let queues: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::QUEUES)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        let mut moved = 0;
        for host in &gone {
            for q in &queues {
                moved += self.reclaim_queue(q, host).await?;
            }
            // Gone for good: a host wrongly taken for gone registers again
            // with its next heartbeat.
            self.forget(host).await?;
        }
        tracing::info!(tasks = moved, hosts = ?gone, "reclaimed the leases of hosts that are gone");
        Ok(moved)
    }

    async fn request_reload(&self) -> Result<usize, QueueError> {
        let n: i64 = redis::cmd("PUBLISH")
            .arg(keys::RELOAD)
            .arg("")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.shared.error(e))?;
        Ok(n.max(0) as usize)
    }

    async fn listen_for_reloads(&self, tx: mpsc::Sender<()>, stop: CancellationToken) {
        let mut reconnect = Reconnect::new();
        loop {
            // Each attempt after a failure tries the next node of the URL.
            let nodes = &self.shared.pubsub;
            let client = nodes[reconnect.failures() as usize % nodes.len()].clone();
            let connect = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(keys::RELOAD).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.shared.opts.connect_timeout, connect) => r,
            };
            match connected {
                Ok(Ok(mut ps)) => {
                    reconnect.connected();
                    let mut messages = ps.on_message();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        if msg.is_none() {
                            break;
                        }
                        // A full channel already holds a reload to come.
                        let _ = tx.try_send(());
                    }
                }
                Ok(Err(e)) => {
                    reconnect.failed();
                    tracing::debug!(error = %e, "cannot subscribe to reload requests; retrying");
                }
                Err(_) => reconnect.failed(),
            }
            if !reconnect.wait(&stop).await {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;

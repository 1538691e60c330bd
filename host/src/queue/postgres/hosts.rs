//! The PostgreSQL backend's host registry.
//!
//! A host's registration is its row in `<schema>.hosts` (its JSON
//! [`HostInfo`]), renewed by every heartbeat to expire [`HEARTBEAT_TTL`]
//! later by the database's clock. A host whose row expired is gone: its
//! leases on every queue are reclaimed at once (`sql/reclaim.sql`) and
//! its row is deleted. A host of this machine and data directory whose
//! run-file lock is free is gone too, without waiting for its row to
//! expire: that is what lets a restart pick up the leases of the process
//! it replaces at once. A clean stop deletes the row and gives back
//! whatever the host still holds (`sql/deregister.sql`).
//!
//! `host reload` bumps every live row's `reloads`; each host looks at its
//! own count every [`RELOAD_POLL`] and reloads when it grew. A count in a
//! row, unlike a `NOTIFY`, reaches a host that was not listening yet, and
//! says exactly how many hosts were asked.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::queue::hosts::{gone_locally, sort_hosts};
use crate::queue::util::lock;
use crate::queue::{HostInfo, HostRegistry, QueueError};

/// How long a registration lives without a heartbeat.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// How often a host looks whether a reload was requested.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The hosts registered in one PostgreSQL schema.
#[derive(Debug)]
pub struct PostgresRegistry {
    shared: Arc<Shared>,
}

impl PostgresRegistry {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Live registrations (rows not expired).
    async fn live(&self) -> Result<Vec<HostInfo>, QueueError> {
        let sh = &self.shared;
        let rows = sh.query(&sh.sql.hosts, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let json: String = r.try_get(0).map_err(|e| sh.pg_error(e))?;
            // A row another version wrote in a shape this one cannot read
            // is skipped, not fatal: the listing is for people.
            match serde_json::from_str::<HostInfo>(&json) {
                Ok(info) => out.push(info),
                Err(e) => tracing::debug!(error = %e, "unreadable host registration"),
            }
        }
        Ok(out)
    }

    /// This host's reload count, if it is registered.
    async fn reloads(&self, id: &str) -> Result<Option<i64>, QueueError> {
        let sh = &self.shared;
        let conn = sh.conn().await?;
        let row = conn
            .query_opt(&sh.sql.reloads, &[&id])
            .await
            .map_err(|e| sh.pg_error(e))?;
        row.map(|r| r.try_get(0).map_err(|e| sh.pg_error(e)))
            .transpose()
    }
}

#[async_trait]
impl HostRegistry for PostgresRegistry {
    async fn heartbeat(&self, me: &HostInfo) -> Result<(), QueueError> {
        let sh = &self.shared;
        *lock(&sh.holder) = Some(me.id.as_str().into());
        *lock(&sh.me) = Some(me.clone());
        let json = serde_json::to_string(me)
            .map_err(|e| QueueError::Config(format!("cannot encode host registration: {e}")))?;
        let ttl = HEARTBEAT_TTL.as_secs_f64();
        sh.execute(&sh.sql.heartbeat, &[&me.id, &json, &ttl])
            .await?;
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), QueueError> {
        let sh = &self.shared;
        {
            let mut holder = lock(&sh.holder);
            if holder.as_deref() == Some(id) {
                *holder = None;
            }
        }
        let now = i64::try_from(sh.clock.now_ms()).unwrap_or(i64::MAX);
        let conn = sh.conn().await?;
        let row = conn
            .query_one(&sh.sql.deregister, &[&id, &now])
            .await
            .map_err(|e| sh.pg_error(e))?;
        let back: i64 = row.try_get(0).map_err(|e| sh.pg_error(e))?;
        if back > 0 {
            tracing::info!(
                tasks = back,
                "gave back the leases this host still held at its stop"
            );
        }
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostInfo>, QueueError> {
        let mut hosts = self.live().await?;
        sort_hosts(&mut hosts);
        Ok(hosts)
    }

    async fn reclaim_gone(&self) -> Result<u64, QueueError> {
        let sh = &self.shared;
        let mine = lock(&sh.holder).clone();
        let me = lock(&sh.me).clone();
        let mut local = Vec::new();
        for h in self.live().await? {
            if mine.as_deref() != Some(h.id.as_str()) && gone_locally(me.as_ref(), &h).await {
                local.push(h.id);
            }
        }
        let conn = sh.conn().await?;
        let gone: Vec<String> = conn
            .query(&sh.sql.gone_hosts, &[&mine.as_deref(), &local])
            .await
            .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
            .map_err(|e| sh.pg_error(e))?;
        if gone.is_empty() {
            return Ok(0);
        }
        let now = i64::try_from(sh.clock.now_ms()).unwrap_or(i64::MAX);
        let moved: i64 = conn
            .query_one(&sh.sql.reclaim, &[&gone, &now])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| sh.pg_error(e))?;
        let moved = u64::try_from(moved).unwrap_or(0);
        tracing::info!(tasks = moved, hosts = ?gone, "reclaimed the leases of hosts that are gone");
        Ok(moved)
    }

    async fn request_reload(&self) -> Result<usize, QueueError> {
        let sh = &self.shared;
        let n = sh.execute(&sh.sql.request_reload, &[]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn listen_for_reloads(&self, tx: mpsc::Sender<()>, stop: CancellationToken) {
        // Counted from this host's registration, which starts at 0.
        let mut seen: Option<(String, i64)> = None;
        let mut tick = crate::backoff::Ticker::new(RELOAD_POLL);
        while tick.next(&stop).await {
            let Some(id) = lock(&self.shared.holder).clone() else {
                continue;
            };
            let count = match self.reloads(&id).await {
                Ok(Some(n)) => n,
                // Not registered (yet, or again after being taken for
                // gone): nothing to compare.
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read reload requests; retrying");
                    continue;
                }
            };
            let before = match &seen {
                Some((s, n)) if **s == *id => *n,
                _ => 0,
            };
            if count > before {
                // A full channel already holds a reload to come.
                let _ = tx.try_send(());
            }
            seen = Some((id.to_string(), count));
        }
    }
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueStore;
    use crate::queue::conformance::{T0, TTL, push_n};
    use crate::registry::RunFile;
    use rusqlite::Connection;

    fn me(id: &str) -> HostInfo {
        HostInfo {
            id: id.into(),
            pid: std::process::id(),
            ..HostInfo::default()
        }
    }

    /// A holder without a run file in the data directory is gone: its
    /// leases come back at once, long before their TTL, and it can neither
    /// renew nor settle them any more. A live holder's leases stay.
    #[tokio::test]
    async fn leases_of_a_gone_holder_come_back_at_once_and_it_cannot_settle_them() {
        let clock = ManualClock::new(T0);
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), Default::default(), clock.clone()).unwrap();
        let q = store.queue("q").unwrap();
        push_n(&*q, 10).await;
        let reg = store.registry();

        // A dead host's leases (no run file names it).
        reg.heartbeat(&me("dead-host")).await.unwrap();
        let dead = q.lease(4, TTL).await.unwrap();
        // This process, registered with its run file and lock.
        let run_file = RunFile::create(dir.path(), vec!["q".into()]).unwrap();
        run_file.write(&[]);
        let alive = run_file.info(&[]);
        reg.heartbeat(&alive).await.unwrap();
        let mine = q.lease(3, TTL).await.unwrap();

        assert_eq!(reg.reclaim_gone().await.unwrap(), 4);
        let s = q.stats().await.unwrap();
        assert_eq!((s.pending, s.leased), (7, 3), "{s:?}");
        crate::queue::hosts_checks::held_leases_are_lost(&*q, &dead).await;
        // The delivery counts, as an expiry's would.
        let again = q.lease(10, TTL).await.unwrap();
        let back: Vec<_> = again.iter().filter(|t| t.attempt == 2).collect();
        assert_eq!(back.len(), 4);
        assert_eq!(reg.reclaim_gone().await.unwrap(), 0, "nothing else is gone");
        let held: Vec<_> = mine.iter().map(|t| t.lease()).collect();
        assert_eq!(q.ack(&held).await.unwrap().applied, 3);
        assert_eq!(reg.hosts().await.unwrap().len(), 1);
        run_file.remove();
        store.close().await;
    }

    /// The `tasks` table as versions before leases recorded a holder made it.
    const TASKS_WITHOUT_HOLDER: &str = "CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, unique_key TEXT,
        payload BLOB NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
        enqueued_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
        leased INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
        INSERT INTO queues (name) VALUES ('q');";

    /// Makes a database in `dir` with an older version's `schema` and `rows`.
    fn old_database(dir: &std::path::Path, schema: &str, rows: &str) {
        let c = Connection::open(dir.join(super::super::DB_FILE)).unwrap();
        c.execute_batch(schema).unwrap();
        c.execute_batch(rows).unwrap();
    }

    /// A database made before leases recorded a holder is migrated in
    /// place: its tasks and leases are kept, and new leases record one.
    #[tokio::test]
    async fn a_database_without_the_holder_column_is_migrated_in_place() {
        let clock = ManualClock::new(T0);
        let dir = tempfile::tempdir().unwrap();
        old_database(
            dir.path(),
            TASKS_WITHOUT_HOLDER,
            "INSERT INTO tasks (queue, payload, enqueued_at, visible_at) VALUES ('q', x'01', 1, 1)",
        );
        let store = DiskStore::open(dir.path(), Default::default(), clock.clone()).unwrap();
        let q = store.queue("q").unwrap();
        assert_eq!(q.stats().await.unwrap().pending, 1);
        store.registry().heartbeat(&me("gone")).await.unwrap();
        let t = q.lease(1, TTL).await.unwrap();
        assert_eq!(t.len(), 1);
        // Its holder leaves without a run file: gone, so the lease comes back.
        store.registry().deregister("gone").await.unwrap();
        assert_eq!(store.registry().reclaim_gone().await.unwrap(), 1);
        store.close().await;
    }

    /// A database whose leases name their holder (a text column, as versions
    /// before holder numbers wrote it) is migrated in place: a gone
    /// holder's leases still come back, and new leases mix with them.
    #[tokio::test]
    async fn holder_names_from_an_older_version_become_numbers() {
        let clock = ManualClock::new(T0);
        let dir = tempfile::tempdir().unwrap();
        let far = T0 + 3_600_000;
        old_database(
            dir.path(),
            &format!(
                "{TASKS_WITHOUT_HOLDER} ALTER TABLE tasks ADD COLUMN holder TEXT;
                 CREATE INDEX tasks_visible ON tasks(queue, visible_at, id);
                 CREATE INDEX tasks_holder ON tasks(holder) WHERE holder IS NOT NULL;"
            ),
            &format!(
                "INSERT INTO tasks (queue, payload, attempt, enqueued_at, visible_at, leased, holder) \
                 VALUES ('q', x'01', 1, 1, {far}, 1, 'gone-host'), \
                        ('q', x'02', 1, 1, {far}, 1, 'gone-host'), \
                        ('q', x'03', 0, 1, 1, 0, NULL)"
            ),
        );
        let store = DiskStore::open(dir.path(), Default::default(), clock.clone()).unwrap();
        let q = store.queue("q").unwrap();
        let reg = store.registry();
        reg.heartbeat(&me("new-host")).await.unwrap();
        let mine = q.lease(1, TTL).await.unwrap();
        assert_eq!(mine.len(), 1);
        // The old host has no run file: gone. This process is not.
        assert_eq!(reg.reclaim_gone().await.unwrap(), 2);
        let s = q.stats().await.unwrap();
        assert_eq!((s.pending, s.leased), (2, 1), "{s:?}");
        assert_eq!(reg.reclaim_gone().await.unwrap(), 0, "once");
        let held: Vec<_> = mine.iter().map(|t| t.lease()).collect();
        assert_eq!(q.ack(&held).await.unwrap().applied, 1);
        store.close().await;
        // The old indexes gave way to the two partial ones.
        let c = Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
        let mut st = c
            .prepare("SELECT name FROM sqlite_schema WHERE tbl_name = 'tasks' AND type = 'index' ORDER BY 1")
            .unwrap();
        let names: Vec<String> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["tasks_leased", "tasks_unique", "tasks_waiting"]);
    }
}

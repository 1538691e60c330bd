//! Persistent queue in an embedded SQLite database: the default backend.
//!
//! Why SQLite (over redb or fjall): it is crash-safe (WAL, atomic commits), it
//! lets several processes open one data directory at once, so `host push` and
//! `host status` work while a host runs, and one `UPDATE ... RETURNING`
//! leases a whole batch atomically.
//!
//! # Files
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`DiskOptions`], [`DiskStore`], [`DiskQueue`]: requests to the writer |
//! | `writer.rs` | the one writer thread per store and its group commit |
//! | `syncer.rs` | the thread that fsyncs the log and answers durable groups |
//! | `sql.rs` | the statements each request runs |
//! | `schema.sql` | the tables, created on open |
//! | `identity.rs` | the store marker, damage checks, the read-only message |
//!
//! # Invariants
//!
//! `tasks` holds every task still to do. A waiting task (`leased = 0`) is
//! visible when `visible_at <= now`; leasing sets `leased = 1`, increments
//! `attempt`, records the holder and moves `visible_at` to the lease expiry.
//! The next lease on the queue makes expired leases wait again, and a lease
//! is held while `(id, attempt, leased = 1)` matches. Only leased rows carry
//! a holder. `dead` holds the newest `dead_capacity` dead letters of each
//! queue (trimmed whenever a settlement adds one); `queues` names every queue ever
//! pushed to, for `host status`; `paused` names the queues an operator paused.
//! All statements run on the writer thread (`admin.rs`: the operator actions).

mod admin;
mod hosts;
mod identity;
mod sql;
mod syncer;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use tokio::sync::{Notify, mpsc, oneshot};

pub(crate) use self::identity::MARKER_FILE;
pub use self::identity::move_aside;
use self::writer::{Reply, Request};
use super::util::{Handles, PushRoom, lock};
use super::{
    BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, QueueStore, Settle,
    Settled, Task, validate_name,
};
use crate::clock::Clock;

/// How hard commits push data to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Every commit that changes tasks is fsynced before it is answered:
    /// survives power loss (what SQLite's `FULL` does).
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash, may lose the last
    /// commits on power loss (SQLite `NORMAL` in WAL mode).
    Normal,
}

/// Settings of the disk backend; all but `max_group` are read from the host
/// configuration's `[disk]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskOptions {
    /// Durability of commits: `full` fsyncs every group commit; `normal`
    /// survives process crashes only.
    pub sync: Sync,
    /// Most tasks one queue holds; `None` for no bound.
    pub capacity: Option<usize>,
    /// How long a push waits for room in a full queue before failing.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
    /// Most dead letters kept per queue; older ones are dropped.
    pub dead_capacity: usize,
    /// Most requests folded into one transaction.
    #[serde(skip)]
    pub max_group: usize,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            sync: Sync::Full,
            capacity: None,
            push_timeout: Duration::from_secs(2),
            dead_capacity: 10_000,
            max_group: 512,
        }
    }
}

/// The database file inside a data directory.
pub const DB_FILE: &str = "queue.sqlite3";

/// The tables, created on open.
const SCHEMA: &str = include_str!("schema.sql");

/// One SQLite database serving any number of named queues.
#[derive(Debug)]
pub struct DiskStore {
    path: PathBuf,
    opts: DiskOptions,
    tx: mpsc::UnboundedSender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
    queues: Handles<DiskQueue>,
    /// Set once SQLite reports the file damaged; from then on every call
    /// fails at once and [`QueueStore::failed`] resolves.
    broken: tokio::sync::watch::Sender<Option<String>>,
    /// The registered host this process is: its leases name it.
    holder: Mutex<Option<Arc<str>>>,
}

/// Puts the database in WAL mode. A new database starts in rollback mode,
/// where two processes switching it at once can deadlock on its locks:
/// SQLite then answers one "database is locked" at once instead of waiting,
/// so that one tries again (the other's switch is done by then).
fn wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let mut tries = 0;
    loop {
        match conn.execute_batch("PRAGMA journal_mode=WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Creates `dir` and any missing parents with mode 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path` empty with mode 0600 unless it exists.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl DiskStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(
        data_dir: &Path,
        opts: DiskOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, QueueError> {
        if opts.dead_capacity == 0 {
            return Err(QueueError::Config(
                "disk dead_capacity must be at least 1".into(),
            ));
        }
        // The queue and the code cache are this user's alone: directories
        // made here are 0700 and the database 0600 (SQLite gives its WAL
        // and shared-memory files the database's mode). Existing ones keep
        // the mode their owner chose.
        private_dir(data_dir).map_err(|e| {
            QueueError::Config(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let marker = identity::read_marker(data_dir)?;
        if let Some(m) = &marker {
            identity::refuse_vanished(data_dir, &path, m)?;
        }
        let mut conn = Self::connect(data_dir, &path)?;
        identity::settle(&mut conn, data_dir, &path, marker, clock.now_ms())?;
        let wal = match opts.sync {
            // The store's identity, just committed, reaches the disk first.
            Sync::Full => {
                let mut wal = syncer::WalFile::of(&path);
                wal.sync().map_err(|e| QueueError::Disk {
                    path: path.display().to_string(),
                    message: format!("cannot fsync its log: {e}"),
                })?;
                Some(wal)
            }
            Sync::Normal => None,
        };
        let (tx, thread) = writer::start(conn, clock, opts.max_group, wal)
            .map_err(|e| QueueError::Config(format!("cannot start disk writer thread: {e}")))?;
        Ok(Arc::new(Self {
            path,
            opts,
            tx,
            thread: Mutex::new(Some(thread)),
            queues: Handles::default(),
            broken: tokio::sync::watch::channel(None).0,
            holder: Mutex::new(None),
        }))
    }

    /// Opens the database, checks it is sound and creates the tables.
    ///
    /// Commits do not fsync (`synchronous=NORMAL`): with `sync = "full"`
    /// the writer fsyncs the log after each commit that changes tasks.
    fn connect(data_dir: &Path, path: &Path) -> Result<Connection, QueueError> {
        let disk_err = |message: String| {
            if identity::is_damage(&message) {
                return identity::corrupt(path, &message);
            }
            QueueError::Disk {
                path: path.display().to_string(),
                message: identity::read_only(data_dir).unwrap_or(message),
            }
        };
        private_file(path).map_err(|e| disk_err(e.to_string()))?;
        let mut conn = Connection::open(path).map_err(|e| disk_err(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| disk_err(e.to_string()))?;
        // Plans that do not depend on bound values: without this SQLite
        // re-prepares a statement at every new binding of a parameter it
        // planned with (the lease's `LIMIT ?`), about a fifth of a lease.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| disk_err(e.to_string()))?;
        wal_mode(&conn).map_err(|e| disk_err(e.to_string()))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| disk_err(e.to_string()))?;
        identity::quick_check(&conn, path)?;
        sql::create_or_migrate(&mut conn, SCHEMA).map_err(|e| disk_err(e.to_string()))?;
        Ok(conn)
    }

    /// Runs SQLite's full `integrity_check` on the database in `data_dir`,
    /// read-only (it works on a store too damaged to open): the problems
    /// found, none when it is sound.
    pub async fn integrity_check(data_dir: &Path) -> Result<Vec<String>, QueueError> {
        let path = data_dir.join(DB_FILE);
        let err = |m: String| QueueError::Disk {
            path: path.display().to_string(),
            message: m,
        };
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            identity::pragma_check(&conn, "integrity_check")
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, QueueError> {
        if let Some(m) = self.broken.borrow().as_deref() {
            return Err(identity::corrupt(&self.path, m));
        }
        let (reply, rx) = oneshot::channel();
        let closed = || QueueError::Closed(self.path.display().to_string());
        self.tx.send(make(reply)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?.map_err(|message| {
            if identity::is_damage(&message) {
                self.mark_broken(&message);
                return identity::corrupt(&self.path, &message);
            }
            QueueError::Disk {
                path: self.path.display().to_string(),
                message,
            }
        })
    }

    /// Remembers that the file is damaged; logs it once.
    fn mark_broken(&self, message: &str) {
        let first = self.broken.send_if_modified(|b| {
            if b.is_some() {
                return false;
            }
            *b = Some(message.to_owned());
            true
        });
        if first {
            tracing::error!(path = %self.path.display(), error = message, "disk queue damaged: stopping");
        }
    }

    /// Finishes the requests already sent, stops the writer thread and waits for it.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Close { reply }).is_ok() {
            let _ = rx.await;
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[async_trait]
impl QueueStore for Arc<DiskStore> {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        validate_name(name)?;
        let q = self.queues.get_or_open(name, || {
            Ok(DiskQueue {
                name: name.into(),
                store: self.clone(),
                work: Notify::new(),
            })
        })?;
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        self.call(|reply| Request::Queues { reply }).await
    }

    async fn close(&self) {
        DiskStore::close(self).await
    }

    async fn failed(&self) -> QueueError {
        let mut rx = self.broken.subscribe();
        let seen = rx.wait_for(Option::is_some).await.map(|m| m.clone());
        let message = match seen {
            Ok(m) => m.unwrap_or_default(),
            // The sender lives in the store: it cannot close before us.
            Err(_) => return std::future::pending().await,
        };
        identity::corrupt(&self.path, &message)
    }

    fn describe(&self) -> String {
        format!("disk queue {}", self.path.display())
    }

    fn registry(&self) -> Arc<dyn super::HostRegistry> {
        Arc::new(hosts::DiskRegistry::new(self.clone()))
    }
}

/// One named queue in a [`DiskStore`].
#[derive(Debug)]
pub struct DiskQueue {
    name: Arc<str>,
    store: Arc<DiskStore>,
    work: Notify,
}

#[async_trait]
impl BaseQueue for DiskQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        let capacity = self.store.opts.capacity;
        let room = PushRoom::start(
            &self.name,
            capacity,
            self.store.opts.push_timeout,
            tasks.len(),
        )?;
        loop {
            let tasks = tasks.clone();
            let queue = self.name.clone();
            let out = self
                .store
                .call(|reply| Request::Push {
                    queue,
                    tasks,
                    capacity,
                    reply,
                })
                .await?;
            if let Some(out) = out {
                self.work.notify_one();
                return Ok(out);
            }
            // Full. Room is made by other processes too, so poll rather than
            // wait for an in-process signal.
            room.wait(tokio::time::sleep(Duration::from_millis(10)))
                .await?;
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        let queue = self.name.clone();
        let holder = lock(&self.store.holder).clone();
        self.store
            .call(|reply| Request::Lease {
                queue,
                max,
                ttl,
                holder,
                reply,
            })
            .await
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        let leases = leases.to_vec();
        self.store
            .call(|reply| Request::Renew { leases, ttl, reply })
            .await
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        self.store
            .call(|reply| Request::Settle {
                settlements,
                dead_capacity: self.store.opts.dead_capacity,
                reply,
            })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let queue = self.name.clone();
        self.store
            .call(|reply| Request::Stats { queue, reply })
            .await
    }

    // Counting every row (as `stats` does) on each poll of
    // `--exit-when-drained` held the writer for tens of ms at 300,000 tasks.
    async fn is_empty(&self) -> Result<bool, QueueError> {
        let queue = self.name.clone();
        self.store
            .call(|reply| Request::Empty { queue, reply })
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        let queue = self.name.clone();
        self.store
            .call(|reply| Request::Dead {
                queue,
                limit,
                reply,
            })
            .await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.work.notified()).await;
    }

    fn admin(&self) -> Option<&dyn super::QueueAdmin> {
        Some(self)
    }
}

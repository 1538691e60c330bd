//! Persistent queue in an embedded SQLite database: the default backend.
//!
//! Why SQLite (over redb or fjall): it is crash-safe (WAL, atomic commits), it
//! lets several processes open one data directory at once, so `host push` and
//! `host status` work while a host runs, and one `UPDATE ... RETURNING`
//! leases a whole batch atomically.
//!
//! All statements run on one writer thread per store. The thread takes every
//! request that queued up while the previous transaction committed and runs
//! them in one transaction (group commit), so a busy queue pays one fsync per
//! group, not one per task.
//!
//! Layout: `tasks` holds every task still to do. A waiting task is visible
//! when `visible_at <= now`; leasing sets `leased = 1`, increments `attempt`
//! and moves `visible_at` to the lease expiry, so an expired lease is simply
//! visible again. `dead` holds dead letters; `queues` names every queue
//! ever pushed to, for `host status`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    Action, BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, QueueStore,
    Settle, Settled, Task, validate_name,
};
use crate::clock::{self, Clock};

/// How hard commits push data to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fsync the log at every commit: survives power loss (SQLite `FULL`).
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash, may lose the last
    /// commits on power loss (SQLite `NORMAL` in WAL mode).
    Normal,
}

/// Settings of the disk backend.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Durability of commits.
    pub sync: Sync,
    /// Most tasks one queue holds; `None` for no bound.
    pub capacity: Option<usize>,
    /// How long a push waits for room in a full queue before failing.
    pub push_timeout: Duration,
    /// Most requests folded into one transaction.
    pub max_group: usize,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            sync: Sync::Full,
            capacity: None,
            push_timeout: Duration::from_secs(2),
            max_group: 512,
        }
    }
}

/// The database file inside a data directory.
pub const DB_FILE: &str = "queue.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    unique_key TEXT,
    payload BLOB NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_visible ON tasks(queue, visible_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique ON tasks(queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    unique_key TEXT,
    payload BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    failed_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_queue ON dead(queue, id);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
";

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Request {
    Push {
        queue: Arc<str>,
        tasks: Vec<NewTask>,
        capacity: Option<usize>,
        reply: Reply<Option<Vec<Pushed>>>,
    },
    Lease {
        queue: Arc<str>,
        max: usize,
        ttl: Duration,
        reply: Reply<Vec<Task>>,
    },
    Renew {
        leases: Vec<Lease>,
        ttl: Duration,
        reply: Reply<usize>,
    },
    Settle {
        settlements: Vec<Settle>,
        reply: Reply<Settled>,
    },
    Stats {
        queue: Arc<str>,
        reply: Reply<QueueStats>,
    },
    Dead {
        queue: Arc<str>,
        limit: usize,
        reply: Reply<Vec<DeadTask>>,
    },
    Queues {
        reply: Reply<Vec<String>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// One SQLite database serving any number of named queues.
#[derive(Debug)]
pub struct DiskStore {
    path: PathBuf,
    opts: DiskOptions,
    tx: mpsc::UnboundedSender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
    queues: Mutex<HashMap<String, Arc<DiskQueue>>>,
}

impl DiskStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(
        data_dir: &Path,
        opts: DiskOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            QueueError::Config(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let disk_err = |e: rusqlite::Error| QueueError::Disk {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(disk_err)?;
        let sync = match opts.sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(disk_err)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; {SCHEMA}"
        ))
        .map_err(disk_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            conn,
            clock,
            max_group: opts.max_group.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("taskhost-disk".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| QueueError::Config(format!("cannot start disk writer thread: {e}")))?;
        Ok(Arc::new(Self {
            path,
            opts,
            tx,
            thread: Mutex::new(Some(thread)),
            queues: Mutex::new(HashMap::new()),
        }))
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        let closed = || QueueError::Closed(self.path.display().to_string());
        self.tx.send(make(reply)).map_err(|_| closed())?;
        rx.await
            .map_err(|_| closed())?
            .map_err(|message| QueueError::Disk {
                path: self.path.display().to_string(),
                message,
            })
    }

    /// Finishes the requests already sent, stops the writer thread and waits for it.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Close { reply }).is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[async_trait]
impl QueueStore for Arc<DiskStore> {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        validate_name(name)?;
        let mut qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = qs.get(name) {
            return Ok(q.clone());
        }
        let q = Arc::new(DiskQueue {
            name: name.into(),
            store: self.clone(),
            work: Notify::new(),
        });
        qs.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        self.call(|reply| Request::Queues { reply }).await
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
        if let Some(cap) = capacity
            && tasks.len() > cap
        {
            return Err(QueueError::BatchTooLarge {
                queue: self.name.to_string(),
                capacity: cap,
                batch: tasks.len(),
            });
        }
        let timeout = self.store.opts.push_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
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
            if tokio::time::Instant::now() >= deadline {
                return Err(QueueError::Full {
                    queue: self.name.to_string(),
                    capacity: capacity.unwrap_or(0),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        let queue = self.name.clone();
        self.store
            .call(|reply| Request::Lease {
                queue,
                max,
                ttl,
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
            .call(|reply| Request::Settle { settlements, reply })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let queue = self.name.clone();
        self.store
            .call(|reply| Request::Stats { queue, reply })
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
}

/// The thread that owns the connection.
struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    max_group: usize,
}

/// A reply to send once the group's transaction has committed.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

fn finish<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Finish {
    Box::new(move |commit_error: Option<&str>| {
        let out = match (result, commit_error) {
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), Some(ce)) => Err(format!("commit failed: {ce}")),
            (Ok(v), None) => Ok(v),
        };
        let _ = reply.send(out);
    })
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let mut close = None;
            let mut work = Vec::with_capacity(group.len());
            for r in group {
                match r {
                    Request::Close { reply } => close = Some(reply),
                    other => work.push(other),
                }
            }
            let group = work;
            self.run_group(group);
            if let Some(reply) = close {
                let _ = reply.send(());
                return;
            }
        }
    }

    fn run_group(&mut self, group: Vec<Request>) {
        if group.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let msg = format!("cannot begin transaction: {e}");
                for r in group {
                    fail(r, &msg);
                }
                return;
            }
        };
        let mut finishes: Vec<Finish> = Vec::with_capacity(group.len());
        let mut tx = tx;
        for r in group {
            // A savepoint per request: one failing request leaves the rest of
            // the group intact.
            let f = match tx.savepoint() {
                Ok(sp) => {
                    let (f, ok) = apply(&sp, r, now);
                    if ok && let Err(e) = sp.commit() {
                        tracing::error!(error = %e, "disk queue: savepoint release failed");
                    }
                    f
                }
                Err(e) => {
                    let msg = format!("cannot open savepoint: {e}");
                    fail(r, &msg);
                    continue;
                }
            };
            finishes.push(f);
        }
        let commit = tx.commit().err().map(|e| e.to_string());
        for f in finishes {
            f(commit.as_deref());
        }
    }
}

fn fail(r: Request, msg: &str) {
    let m = msg.to_owned();
    match r {
        Request::Push { reply, .. } => drop(reply.send(Err(m))),
        Request::Lease { reply, .. } => drop(reply.send(Err(m))),
        Request::Renew { reply, .. } => drop(reply.send(Err(m))),
        Request::Settle { reply, .. } => drop(reply.send(Err(m))),
        Request::Stats { reply, .. } => drop(reply.send(Err(m))),
        Request::Dead { reply, .. } => drop(reply.send(Err(m))),
        Request::Queues { reply } => drop(reply.send(Err(m))),
        Request::Close { reply } => drop(reply.send(())),
    }
}

/// Runs one request; the flag says whether its changes should be kept.
fn apply(c: &Connection, r: Request, now: u64) -> (Finish, bool) {
    fn done<T: Send + 'static>(reply: Reply<T>, res: rusqlite::Result<T>) -> (Finish, bool) {
        let ok = res.is_ok();
        (finish(reply, res), ok)
    }
    match r {
        Request::Push {
            queue,
            tasks,
            capacity,
            reply,
        } => done(reply, push(c, &queue, tasks, capacity, now)),
        Request::Lease {
            queue,
            max,
            ttl,
            reply,
        } => done(reply, lease(c, &queue, max, clock::after(now, ttl), now)),
        Request::Renew { leases, ttl, reply } => {
            done(reply, renew(c, &leases, clock::after(now, ttl)))
        }
        Request::Settle { settlements, reply } => done(reply, settle(c, settlements, now)),
        Request::Stats { queue, reply } => done(reply, stats(c, &queue, now)),
        Request::Dead {
            queue,
            limit,
            reply,
        } => done(reply, dead(c, &queue, limit)),
        Request::Queues { reply } => done(reply, queues(c)),
        Request::Close { reply } => {
            let _ = reply.send(());
            (Box::new(|_| {}), true)
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn push(
    c: &Connection,
    queue: &str,
    tasks: Vec<NewTask>,
    capacity: Option<usize>,
    now: u64,
) -> rusqlite::Result<Option<Vec<Pushed>>> {
    if let Some(cap) = capacity {
        let n: i64 = c
            .prepare_cached("SELECT count(*) FROM tasks WHERE queue = ?1")?
            .query_row([queue], |r| r.get(0))?;
        if n as usize + tasks.len() > cap {
            return Ok(None);
        }
    }
    c.prepare_cached("INSERT OR IGNORE INTO queues (name) VALUES (?1)")?
        .execute([queue])?;
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO tasks (queue, unique_key, payload, enqueued_at, visible_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut find = c.prepare_cached("SELECT id FROM tasks WHERE queue = ?1 AND unique_key = ?2")?;
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let visible = clock::after(now, t.delay.unwrap_or_default());
        let n = insert.execute(params![
            queue,
            t.unique_key,
            t.payload,
            to_i64(now),
            to_i64(visible)
        ])?;
        if n == 1 {
            out.push(Pushed::Created(c.last_insert_rowid() as u64));
        } else {
            let id: i64 = find.query_row(params![queue, t.unique_key], |r| r.get(0))?;
            out.push(Pushed::Duplicate(id as u64));
        }
    }
    Ok(Some(out))
}

fn lease(
    c: &Connection,
    queue: &Arc<str>,
    max: usize,
    until: u64,
    now: u64,
) -> rusqlite::Result<Vec<Task>> {
    let mut st = c.prepare_cached(
        "UPDATE tasks SET leased = 1, attempt = attempt + 1, visible_at = ?3 \
         WHERE id IN (SELECT id FROM tasks WHERE queue = ?1 AND visible_at <= ?2 \
                      ORDER BY visible_at, id LIMIT ?4) \
         RETURNING id, unique_key, payload, attempt, enqueued_at",
    )?;
    let mut out = st
        .query_map(
            params![&**queue, to_i64(now), to_i64(until), max as i64],
            |r| {
                Ok(Task {
                    id: r.get::<_, i64>(0)? as u64,
                    queue: queue.clone(),
                    unique_key: r.get(1)?,
                    payload: r.get(2)?,
                    attempt: r.get(3)?,
                    enqueued_at_ms: r.get::<_, i64>(4)? as u64,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    out.sort_by_key(|t| t.id);
    Ok(out)
}

fn renew(c: &Connection, leases: &[Lease], until: u64) -> rusqlite::Result<usize> {
    let mut st = c.prepare_cached(
        "UPDATE tasks SET visible_at = ?3 WHERE id = ?1 AND attempt = ?2 AND leased = 1",
    )?;
    let mut held = 0;
    for l in leases {
        held += st.execute(params![l.id as i64, l.attempt, to_i64(until)])?;
    }
    Ok(held)
}

fn settle(c: &Connection, settlements: Vec<Settle>, now: u64) -> rusqlite::Result<Settled> {
    let mut out = Settled::default();
    for s in settlements {
        let (id, attempt) = (s.lease.id as i64, s.lease.attempt);
        let n = match s.action {
            Action::Ack => c
                .prepare_cached("DELETE FROM tasks WHERE id = ?1 AND attempt = ?2 AND leased = 1")?
                .execute(params![id, attempt])?,
            Action::RetryAt(at) => c
                .prepare_cached(
                    "UPDATE tasks SET leased = 0, visible_at = ?3 \
                     WHERE id = ?1 AND attempt = ?2 AND leased = 1",
                )?
                .execute(params![id, attempt, to_i64(at)])?,
            // Back at its original place in line, this delivery not counted.
            Action::Release => c
                .prepare_cached(
                    "UPDATE tasks SET leased = 0, attempt = attempt - 1, \
                     visible_at = min(enqueued_at, ?3) \
                     WHERE id = ?1 AND attempt = ?2 AND leased = 1",
                )?
                .execute(params![id, attempt, to_i64(now)])?,
            Action::DeadLetter(reason) => {
                let n = c
                    .prepare_cached(
                        "INSERT OR REPLACE INTO dead \
                         (id, queue, unique_key, payload, attempt, enqueued_at, failed_at, reason) \
                         SELECT id, queue, unique_key, payload, attempt, enqueued_at, ?3, ?4 \
                         FROM tasks WHERE id = ?1 AND attempt = ?2 AND leased = 1",
                    )?
                    .execute(params![id, attempt, to_i64(now), reason])?;
                if n == 1 {
                    c.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
                        .execute([id])?;
                }
                n
            }
        };
        if n == 1 {
            out.applied += 1;
        } else {
            out.lost += 1;
        }
    }
    Ok(out)
}

fn stats(c: &Connection, queue: &str, now: u64) -> rusqlite::Result<QueueStats> {
    let (pending, delayed, leased): (i64, i64, i64) = c
        .prepare_cached(
            "SELECT coalesce(sum(visible_at <= ?2), 0), \
                    coalesce(sum(visible_at > ?2 AND leased = 0), 0), \
                    coalesce(sum(visible_at > ?2 AND leased = 1), 0) \
             FROM tasks WHERE queue = ?1",
        )?
        .query_row(params![queue, to_i64(now)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let dead: i64 = c
        .prepare_cached("SELECT count(*) FROM dead WHERE queue = ?1")?
        .query_row([queue], |r| r.get(0))?;
    Ok(QueueStats {
        pending: pending as u64,
        delayed: delayed as u64,
        leased: leased as u64,
        dead: dead as u64,
    })
}

fn dead(c: &Connection, queue: &Arc<str>, limit: usize) -> rusqlite::Result<Vec<DeadTask>> {
    let mut st = c.prepare_cached(
        "SELECT id, unique_key, payload, attempt, enqueued_at, failed_at, reason \
         FROM dead WHERE queue = ?1 ORDER BY failed_at DESC, id DESC LIMIT ?2",
    )?;
    st.query_map(params![&**queue, limit as i64], |r| {
        Ok(DeadTask {
            task: Task {
                id: r.get::<_, i64>(0)? as u64,
                queue: queue.clone(),
                unique_key: r.get(1)?,
                payload: r.get(2)?,
                attempt: r.get(3)?,
                enqueued_at_ms: r.get::<_, i64>(4)? as u64,
            },
            failed_at_ms: r.get::<_, i64>(5)? as u64,
            reason: r.get(6)?,
        })
    })?
    .collect()
}

fn queues(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare_cached(
        "SELECT name FROM queues UNION SELECT DISTINCT queue FROM dead ORDER BY 1",
    )?;
    st.query_map([], |r| r.get(0))?.collect()
}

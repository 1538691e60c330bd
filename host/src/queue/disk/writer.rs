//! The writer thread: owns the connection and runs every request.
//!
//! It takes every request that queued up while the previous transaction
//! committed and runs them in one transaction (group commit), so a busy
//! queue pays one fsync per group, not one per task. In a group of several,
//! each request gets a savepoint, so one failing request leaves the rest
//! intact; replies are sent only after the group's commit.
//!
//! With `sync = "full"`, a group that only leases or reads commits without
//! an fsync: losing a lease to a power cut only makes its tasks pending
//! again (at-least-once holds, nothing accepted is lost), while a kill -9
//! loses nothing at all (the OS still holds the write). The next group
//! that pushes or settles fsyncs the log, earlier frames included. This
//! halves the fsyncs of a drain, whose every batch is one lease and one ack.
//!
//! The connection therefore runs with SQLite's `synchronous=NORMAL` (no
//! fsync at commit in WAL mode), and after a commit that needs it the
//! fsync thread (`syncer.rs`) fsyncs the log before the group is answered,
//! which is what `FULL` does, while the writer runs the next group.
//! Switching the pragma per group instead made SQLite re-prepare every
//! cached statement.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::sql::{dead, empty, holders, lease, push, queues, reclaim, renew, settle, stats};
use super::syncer::{Syncer, WalFile, answer};
use crate::clock::{self, Clock};
use crate::queue::{DeadTask, Lease, NewTask, Pushed, QueueStats, Settle, Settled, Task};

/// Where a request's answer goes (errors as SQLite's message).
pub(super) type Reply<T> = oneshot::Sender<Result<T, String>>;

/// One operation for the writer thread.
pub(super) enum Request {
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
        /// The registered host taking the lease, if any.
        holder: Option<Arc<str>>,
        reply: Reply<Vec<Task>>,
    },
    Holders {
        reply: Reply<Vec<String>>,
    },
    Reclaim {
        holders: Vec<String>,
        reply: Reply<u64>,
    },
    Renew {
        leases: Vec<Lease>,
        ttl: Duration,
        reply: Reply<usize>,
    },
    Settle {
        settlements: Vec<Settle>,
        /// Most dead letters kept per queue.
        dead_capacity: usize,
        reply: Reply<Settled>,
    },
    Stats {
        queue: Arc<str>,
        reply: Reply<QueueStats>,
    },
    /// Whether a queue has no task left to do (an index probe, not a count).
    Empty {
        queue: Arc<str>,
        reply: Reply<bool>,
    },
    Dead {
        queue: Arc<str>,
        limit: usize,
        reply: Reply<Vec<DeadTask>>,
    },
    Queues {
        reply: Reply<Vec<String>>,
    },
    /// Work built elsewhere in the backend (the operator actions in
    /// `admin.rs`); handed the connection, or the reason there is none.
    Job {
        run: Job,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Starts the writer thread on `conn`; it stops after a [`Request::Close`]
/// or when every sender is gone.
/// `wal` is the database's log when every commit that changes tasks must
/// reach the disk (`sync = "full"`); the connection runs with
/// `synchronous=NORMAL`.
pub(super) fn start(
    conn: Connection,
    clock: Arc<dyn Clock>,
    max_group: usize,
    wal: Option<WalFile>,
) -> std::io::Result<(mpsc::UnboundedSender<Request>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer {
        conn,
        clock,
        max_group: max_group.max(1),
        syncer: wal.map(Syncer::start).transpose()?,
    };
    let thread = std::thread::Builder::new()
        .name("taskhost-disk".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, thread))
}

/// The thread that owns the connection.
struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    max_group: usize,
    /// Fsyncs the log after commits that change tasks (`sync = "full"`).
    syncer: Option<Syncer>,
}

/// A reply to send once the group's transaction has committed.
pub(super) type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// A [`Request::Job`]: runs on the connection at `now` (or is told why it
/// cannot), answering its reply and whether its changes should be kept.
pub(super) type Job = Box<dyn FnOnce(Result<&Connection, &str>, u64) -> (Finish, bool) + Send>;

pub(super) fn finish<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Finish {
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
                if let Some(s) = &mut self.syncer {
                    s.stop();
                }
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
        let durable = group.iter().any(needs_fsync);
        self.commit_group(group, now, durable);
    }

    /// Runs `group` in one transaction; `durable` groups reach the disk
    /// before they are answered.
    fn commit_group(&mut self, mut group: Vec<Request>, now: u64, durable: bool) {
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
        let syncer = self.syncer.as_ref().filter(|_| durable);
        // A lone request needs no savepoint (the transaction is its own),
        // and the page copies a savepoint keeps cost as much as the work.
        if group.len() == 1
            && let Some(r) = group.pop()
        {
            let (f, ok) = apply(&tx, r, now);
            if !ok {
                drop(tx.rollback());
                return f(None);
            }
            return finish_group(tx, vec![f], syncer);
        }
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
        finish_group(tx, finishes, syncer);
    }
}

/// Commits, then answers: through the fsync thread when given one.
fn finish_group(tx: rusqlite::Transaction<'_>, finishes: Vec<Finish>, syncer: Option<&Syncer>) {
    match (tx.commit(), syncer) {
        (Ok(()), Some(s)) => s.answer_when_synced(finishes),
        (Ok(()), None) => answer(finishes, None),
        (Err(e), _) => answer(finishes, Some(&e.to_string())),
    }
}

/// True for requests whose commit must reach the disk before they are
/// answered: everything but leases and reads.
fn needs_fsync(r: &Request) -> bool {
    !matches!(
        r,
        Request::Lease { .. }
            | Request::Holders { .. }
            | Request::Stats { .. }
            | Request::Empty { .. }
            | Request::Dead { .. }
            | Request::Queues { .. }
    )
}

fn fail(r: Request, msg: &str) {
    let m = msg.to_owned();
    match r {
        Request::Push { reply, .. } => drop(reply.send(Err(m))),
        Request::Lease { reply, .. } => drop(reply.send(Err(m))),
        Request::Renew { reply, .. } => drop(reply.send(Err(m))),
        Request::Settle { reply, .. } => drop(reply.send(Err(m))),
        Request::Stats { reply, .. } => drop(reply.send(Err(m))),
        Request::Empty { reply, .. } => drop(reply.send(Err(m))),
        Request::Dead { reply, .. } => drop(reply.send(Err(m))),
        Request::Queues { reply } => drop(reply.send(Err(m))),
        Request::Holders { reply } => drop(reply.send(Err(m))),
        Request::Reclaim { reply, .. } => drop(reply.send(Err(m))),
        Request::Job { run } => (run(Err(msg), 0).0)(None),
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
            holder,
            reply,
        } => done(
            reply,
            lease(
                c,
                &queue,
                max,
                clock::after(now, ttl),
                now,
                holder.as_deref(),
            ),
        ),
        Request::Holders { reply } => done(reply, holders(c)),
        Request::Reclaim { holders, reply } => done(reply, reclaim(c, &holders, now)),
        Request::Renew { leases, ttl, reply } => {
            done(reply, renew(c, &leases, clock::after(now, ttl)))
        }
        Request::Settle {
            settlements,
            dead_capacity,
            reply,
        } => done(reply, settle(c, settlements, dead_capacity, now)),
        Request::Stats { queue, reply } => done(reply, stats(c, &queue, now)),
        Request::Empty { queue, reply } => done(reply, empty(c, &queue)),
        Request::Dead {
            queue,
            limit,
            reply,
        } => done(reply, dead(c, &queue, limit)),
        Request::Queues { reply } => done(reply, queues(c)),
        Request::Job { run } => run(Ok(c), now),
        Request::Close { reply } => {
            let _ = reply.send(());
            (Box::new(|_| {}), true)
        }
    }
}

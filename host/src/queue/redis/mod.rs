//! Redis backend: many hosts share one queue, with leases, unique keys,
//! delayed retries and dead letters held in Redis (>= 6.2: `LPOP` with a
//! count, `ZMSCORE`).
//!
//! # Files
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`RedisOptions`], [`RedisStore`] and the state its queues share |
//! | `conn.rs` | the connection: one server, or a Redis Cluster (`redis+cluster://`) |
//! | `shards.rs` | [`ShardedQueue`]: a queue split into shards, seen as one |
//! | `queue.rs` | [`RedisQueue`]: one queue or shard; builds each script's arguments, reads its reply |
//! | `scripts/*.lua` | one Lua program per state change, each documenting its `ARGV` and reply |
//! | `script.rs` | loading, calling and retrying the scripts |
//! | `keys.rs` | every key and channel name |
//! | `migrate.rs` | bringing a queue written by an older layout to this one |
//! | `codec.rs` | the element: one task as one string |
//! | `wake.rs` | the pub/sub listener that wakes idle hosts |
//! | `hosts.rs` | the host registry: heartbeats, reclaiming a gone host's leases, reload messages |
//! | `admin.rs` | the operator actions (peek, dead letters, cancel, pause); their scripts are `scripts/admin_*.lua` |
//!
//! # Keys of queue `q`
//!
//! A task is one string, its *element* (see `codec.rs`), which moves whole
//! between the keys below and exists in exactly one of them at a time.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `taskhost:{q}:seq` | string | last task id (read and set once per push batch) |
//! | `taskhost:{q}:ready` | list | elements visible now, oldest first |
//! | `taskhost:{q}:bseq` | string | last lease batch number |
//! | `taskhost:{q}:batches` | hash | batch -> the elements one lease call handed out and not yet settled, as one MessagePack array; a batch is `<number>.<nonce>` |
//! | `taskhost:{q}:sizes` | hash | batch -> how many elements it holds |
//! | `taskhost:{q}:leased` | sorted set | batches, scored by lease expiry (ms) |
//! | `taskhost:{q}:held` | string | how many elements the batches hold (for capacity and stats) |
//! | `taskhost:{q}:delayed` | sorted set | elements of delayed pushes and retries, scored by visible-at (ms) |
//! | `taskhost:{q}:unique` | hash | unique key -> id of the pending/delayed/leased task |
//! | `taskhost:{q}:deadz` | sorted set | `<failed_at>:<reason length>:<reason><element>` scored by task id (paged by id), trimmed to the highest ids |
//! | `taskhost:{q}:paused` | string | exists while an operator has paused the queue |
//! | `taskhost:{q}:holders` | sorted set | `<host>\0<batch>` (all scored 0, so one host's sort together) for each batch a registered host holds (batch names end `@<host>`) |
//! | `taskhost:queues` | set | names of queues ever pushed to (for `host status`) |
//! | `taskhost:shards` | hash | queue name -> its shard count (see `shards.rs`) |
//! | `taskhost:layouts` | hash | queue name -> the layout of its keys (see `migrate.rs`) |
//! | `taskhost:hosts` | set | ids of registered hosts (see `hosts.rs`) |
//! | `taskhost:host:<id>` | string | a host's registration as JSON; its TTL is the heartbeat |
//! | `taskhost:reload` | pub/sub channel | `host reload` asks every host to reload its plugins |
//! | `taskhost:{q}:wake` | pub/sub channel | an empty message whenever a push or release made tasks ready |
//!
//! The `{q}` hash tag puts all of a queue's keys in one Redis Cluster slot.
//! Each script declares in `KEYS` every key it touches (the first routes
//! it; see `script.rs`), so no key name is built inside a script: a batch
//! is a field of `batches`, not a key of its own.
//! A queue of N > 1 shards has the keys above once per shard, under
//! `taskhost:{q#i}:` for shard `i` (or `{q#i.k}`: see [`shard_prefix`]).
//!
//! # Invariants and why
//!
//! - Each state change is one Lua script, so it is atomic: push (capacity,
//!   unique keys, ids, elements to `ready` or `delayed`), lease (promote due
//!   retries, reclaim expired batches, pop, record the batch), renew, settle
//!   (a whole batch of acks, retries, dead letters and releases).
//! - A leased task stays in Redis (in its batch's field of `batches`) until its holder
//!   settles it, so a host that dies loses nothing: its leases expire and the
//!   next lease call of any host moves them back to `ready`. Reclaiming reads
//!   only the expired head of `leased`, bounded per call, never all keys.
//!   Lists with a lease sorted set beat Streams here: Streams keep acked
//!   entries until trimmed, have no per-entry delay, and XAUTOCLAIM walks
//!   the pending list rather than jumping to what expired.
//! - Leases are kept per *batch*, not per task, because Redis's CPU per task
//!   limits throughput (one core serves every host) and per-task hash or
//!   sorted-set entries cost cache misses. Acking a whole batch deletes its
//!   field without unpacking it; settling part of one reads it and keeps
//!   the rest held; renewing is one `ZADD` per batch.
//! - A lease proves itself by its batch: an expired batch is reclaimed and
//!   its name never used again, so a host whose lease was taken over is
//!   refused. The name is the batch number plus a random nonce the lease
//!   caller makes, because the number alone comes back when Redis loses
//!   recent writes (a restart from an older snapshot, a failover): without
//!   the nonce a stale holder would settle another host's batch. Only the
//!   handle that leased a task can settle or renew it (it remembers each
//!   lease's batch and unique key); another handle's settlement counts as
//!   lost, and so does a renewal of an expired batch.
//! - Every script's work is bounded per call in elements and bytes
//!   ([`RedisOptions::script_elements`], [`RedisOptions::script_bytes`]):
//!   a lease call moves back at most that much of the due retries and
//!   expired batches (a big batch moves in parts over several calls) and
//!   hands out at most that much; `stats` counts at most 1,000 expired
//!   batches. A script that has written cannot be killed, so a long one
//!   would stall every host.
//! - An element this layout cannot read is reported in the log and left in
//!   Redis; it never stops the tasks beside it.
//! - Times come from the store's [`Clock`] and travel as script arguments,
//!   so tests drive expiry deterministically, and hosts agree as far as
//!   their wall clocks do (keep them NTP-synced; a lease TTL of many seconds
//!   absorbs the usual skew).
//!
//! # Failures
//!
//! The connection to one server reconnects in the background after a
//! connection error; the cluster client also follows slot moves and
//! refreshes its slot map when a replica takes over a failed master. Errors carry the (password-free) URL and say when
//! Redis is unreachable. `renew` and `settle` are idempotent (a settlement
//! applies only to an element still in its batch), so they are retried on
//! connection errors with the shared back-off for up to
//! [`RedisOptions::retry_for`]; lease errors are backed off by the worker
//! pool; a push error is returned to the caller, so nothing acknowledged as
//! pushed is lost.
//!
//! A cluster failover can lose the writes the old master had not yet
//! replicated (Redis replicates asynchronously). What still holds: a lost
//! lease or settlement only makes its tasks come back (at-least-once); the
//! lease nonce keeps a holder from settling a batch whose number the new
//! master hands out again; only a push acknowledged within the replication
//! lag before the failover can be lost, as with any Redis writer.

mod admin;
mod codec;
mod conn;
mod hosts;
mod keys;
mod migrate;
mod queue;
mod script;
mod shards;
mod wake;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use self::keys::shard_prefix;
pub use self::queue::RedisQueue;
use self::script::Scripts;
pub use self::shards::ShardedQueue;
use super::util::Handles;
use super::{BaseQueue, QueueError, QueueStore, validate_name};
use crate::clock::Clock;

/// Settings of the Redis backend; the first three are read from the host
/// configuration's `[redis]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisOptions {
    /// Most tasks (pending, delayed and leased) one queue holds; unbounded when absent.
    pub capacity: Option<usize>,
    /// How long a push waits for room in a full queue before failing.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
    /// Most dead letters kept per queue; older ones are dropped.
    pub dead_capacity: usize,
    /// Most elements one lease call moves back to `ready` (due retries and
    /// expired leases) and, separately, hands out; the rest waits for the
    /// next call, so no script blocks Redis long.
    #[serde(skip)]
    pub script_elements: usize,
    /// Most bytes of elements one lease call moves back and, separately,
    /// hands out (at least one element always moves).
    #[serde(skip)]
    pub script_bytes: usize,
    /// How long renew and settle keep retrying through connection errors.
    #[serde(skip)]
    pub retry_for: Duration,
    /// How long one connection attempt may take.
    #[serde(skip)]
    pub connect_timeout: Duration,
    /// How long one command may take before it counts as failed.
    #[serde(skip)]
    pub response_timeout: Duration,
    /// PEM file of the CA that signed a `rediss://` server's certificate
    /// (a private CA); without it the bundled Mozilla roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// Queues split into shards, by name: `[redis.shards] archive = 3`
    /// (see `shards.rs`); every other queue is one shard.
    pub shards: BTreeMap<String, usize>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            capacity: None,
            push_timeout: Duration::from_secs(2),
            dead_capacity: 10_000,
            // Measured by `benches/redis_recovery.rs`: with 1 KiB tasks
            // a reclaiming lease call stays well under 50 ms; 8 MiB took
            // over 200 ms on a busy 2-core machine.
            script_elements: 1_000,
            script_bytes: 512 << 10,
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            ca_file: None,
            shards: BTreeMap::new(),
        }
    }
}

/// State shared by a store and its queues.
struct Shared {
    url: String,
    conn: conn::Conn,
    opts: RedisOptions,
    clock: Arc<dyn Clock>,
    scripts: Scripts,
    /// One client per node of the URL, for pub/sub (see `conn.rs`).
    pubsub: Vec<redis::Client>,
    /// The shard count of each queue used so far (see `shards.rs`).
    layouts: Mutex<std::collections::HashMap<String, usize>>,
    /// Per queue name: woken when Redis says work arrived.
    /// Per-queue wake-ups and the listener ringing them.
    wakes: crate::queue::wakes::Wakes,
    /// Since when Redis has been unreachable, if it is: its return is logged once.
    outage: Mutex<Option<std::time::Instant>>,
    /// The registered host this process is: its leases name it.
    holder: Mutex<Option<Arc<str>>>,
    /// This host's registration, for telling whether another host of the
    /// same machine and data directory is gone.
    me: Mutex<Option<crate::queue::HostInfo>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A queue error naming the URL, saying so when Redis is unreachable.
    ///
    /// An unreachable Redis also starts an outage (if none is running), so
    /// the next script that gets through logs the return, whichever
    /// command saw Redis go.
    fn error(&self, e: redis::RedisError) -> QueueError {
        let unreachable = script::is_connection(&e);
        if unreachable {
            self.outage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(std::time::Instant::now);
        }
        QueueError::Redis {
            url: self.url.clone(),
            message: if unreachable {
                format!("Redis is unreachable: {e}")
            } else {
                e.to_string()
            },
        }
    }

    /// The value of `field` in hash `key`.
    async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, QueueError> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))
    }
}

/// The URL without a password, for messages: the userinfo of
/// `redis://user:pass@host` and the `pass`/`password` query parameters of
/// `redis+unix:///path?pass=...` are replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &base[..s + 3], &base[at..]),
        _ => base.to_owned(),
    };
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if matches!(&*percent_decoded(k), "pass" | "password") => {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

/// A query key as the URL parser reads it (`%73` is `s`), so an encoded
/// key cannot slip a password past [`redact`].
fn percent_decoded(k: &str) -> String {
    let b = k.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a queue name for this backend: braces are its hash tag and `#`
/// comes before a shard number.
fn check_name(name: &str) -> Result<(), QueueError> {
    validate_name(name)?;
    if name.contains(['{', '}', '#']) {
        return Err(QueueError::Config(format!(
            "queue name {name:?}: the redis backend uses {{ }} as its hash tag and # before a shard number; pick a name without them"
        )));
    }
    Ok(())
}

/// Named queues in one Redis database.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
    queues: Handles<ShardedQueue>,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`); connects lazily.
    ///
    /// Must be called inside a tokio runtime: the connection manager runs
    /// its reconnects there.
    pub fn open(url: &str, opts: RedisOptions, clock: Arc<dyn Clock>) -> Result<Self, QueueError> {
        let shown = redact(url);
        let bad = |e: redis::RedisError| QueueError::Config(format!("queue URL {shown}: {e}"));
        if opts.script_elements == 0 || opts.script_bytes == 0 || opts.dead_capacity == 0 {
            return Err(QueueError::Config(
                "redis script_elements, script_bytes and dead_capacity must be at least 1".into(),
            ));
        }
        for (queue, &n) in &opts.shards {
            check_name(queue)?;
            if n == 0 || n > shards::MAX_SHARDS {
                return Err(QueueError::Config(format!(
                    "redis.shards.{queue} = {n}: a queue has 1 to {} shards",
                    shards::MAX_SHARDS
                )));
            }
        }
        let opened = conn::open(url, &opts).map_err(|e| match e {
            conn::ConnError::Redis(e) => bad(e),
            conn::ConnError::Config(msg) => QueueError::Config(msg),
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                url: shown,
                conn: opened.conn,
                opts,
                clock,
                scripts: Scripts::new(),
                pubsub: opened.pubsub,
                layouts: Mutex::default(),
                wakes: Default::default(),
                outage: Mutex::new(None),
                holder: Mutex::new(None),
                me: Mutex::new(None),
            }),
            queues: Handles::default(),
        })
    }

    /// Checks that Redis answers (PING), naming the URL when it does not,
    /// and that the configured shard counts agree with Redis (recording
    /// them for queues not used yet).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.shared.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        for queue in self.shared.opts.shards.keys() {
            self.shared.layout(queue).await?;
        }
        Ok(())
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Whether the wake-up listener is subscribed (starts it if needed).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.shared.ensure_listening();
        self.shared.wakes.listening()
    }

    /// Stops the wake-up listener and waits for it.
    pub async fn close(&self) {
        self.shared.wakes.stop().await;
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Queue handles may outlive the store; the listener must not.
        self.shared.wakes.cancel();
    }
}

#[async_trait]
impl QueueStore for RedisStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        check_name(name)?;
        let q = self
            .queues
            .get_or_open(name, || Ok(ShardedQueue::new(name, self.shared.clone())))?;
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.shared.conn.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::QUEUES)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        names.sort();
        Ok(names)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        RedisStore::ping(self).await
    }

    async fn close(&self) {
        RedisStore::close(self).await
    }

    fn describe(&self) -> String {
        format!("redis at {}", self.url())
    }

    fn registry(&self) -> Arc<dyn crate::queue::HostRegistry> {
        Arc::new(hosts::RedisRegistry::new(self.shared.clone()))
    }
}

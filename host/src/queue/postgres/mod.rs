//! PostgreSQL backend: many hosts share the queues in a database they may
//! already run, and producers can enqueue inside their own transactions.
//!
//! # Files
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`PostgresOptions`], [`PostgresStore`] and the state its queues share |
//! | `queue.rs` | [`PostgresQueue`]: each operation's statement, arguments and reply |
//! | `push.rs` | pushing a batch in one statement, and finding who holds a taken unique key |
//! | `sql/*.sql`, `statements.rs` | one statement per operation, each documenting its parameters; filled in with the schema's name |
//! | `rows_tests.rs`, `tests.rs` | rows of tasks; the rest of what is Postgres's own |
//! | `migrate.rs`, `migrations/NNNN_*.sql` | the schema, created and upgraded by the host |
//! | `wake.rs` | the `LISTEN` connection that wakes idle hosts |
//! | `vacuum.rs` | vacuuming `tasks` after every so many settled tasks |
//! | `admin.rs` | the operator actions (peek, dead letters, cancel, pause) |
//! | `hosts.rs` | the host registry: heartbeats, reclaiming a gone host's leases, reload requests |
//!
//! # Layout (schema `taskhost` by default)
//!
//! `tasks` holds live tasks only (pending, delayed, leased), in rows of up
//! to [`PostgresOptions::tasks_per_row`] tasks pushed together (ids,
//! payloads and unique keys as arrays, the live ones after the first
//! `lo`); `keys` the unique keys of live tasks; `dead` the dead letters
//! (trimmed to [`PostgresOptions::dead_capacity`] per queue); `queues`
//! the names ever pushed to; `hosts` the running hosts (see `hosts.rs`);
//! `schema_migrations` the applied migrations. `push(queue, payload,
//! unique_key, delay)` is the producers' transactional enqueue (see the
//! README); `settle(...)` settles tasks of leased rows in any mix of
//! actions (migration 5).
//!
//! # Invariants and why
//!
//! - Every statement works on rows, not tasks: a task costs Postgres a
//!   hundredth of a row lock, row version and index entry (45 -> 13 us of
//!   server CPU per task; see migration 5).
//! - A lease is one statement per batch over `SELECT ... FOR NO KEY
//!   UPDATE SKIP LOCKED`: hosts never wait on each other's rows and never
//!   get the same row. A row larger than the lease still wants is split,
//!   its front copied into a new leased row (see `sql/lease.sql`); so no
//!   task is in two rows, and each leased row belongs to one lease.
//! - A leased row keeps its lease expiry in `visible_at`, so reclaiming an
//!   expired lease is no separate step: it is due like any pending task.
//! - Each lease carries a random nonce, remembered by the handle that
//!   leased with the row of each task; renew and settle match row and
//!   nonce, so a holder whose lease expired and was taken over can never
//!   settle or renew another host's lease.
//! - A row whose tasks were all acked is deleted by one statement per
//!   batch; other settlements go through `settle`. Whatever ends a task
//!   (ack, dead letter, cancel) deletes its key from `keys` in the same
//!   statement, and a push claims a key there before it stores the task:
//!   so `keys` holds exactly the keys of live tasks.
//! - Times come from the store's [`Clock`] and travel as parameters (ms), so
//!   tests drive expiry deterministically; `push()` for producers uses the
//!   database's `now()`.
//! - Pushes that make tasks ready and releases `NOTIFY` the channel
//!   `<schema>.wake` with the queue name; waiting hosts `LISTEN` on it and
//!   still poll on their time-outs, so a lost notification only delays.
//!
//! # Plans
//!
//! The planner's idea of the size of `tasks` comes from its last vacuum or
//! analyse, often taken when the backlog was near empty (reltuples 0). A
//! join between `tasks` and a batch's arrays was then planned as a scan of
//! all of `tasks` per batch (a lease of 100 took 14 s on 185,000 rows). So
//! no statement joins `tasks` with anything: a batch's rows are found by
//! `id = ANY($ids)` on the primary key (or by `ctid` within the lease),
//! their other per-row arguments by `array_position`; and the host's
//! connections set `enable_seqscan=off` and `enable_bitmapscan=off`, so the lease walks `tasks_due` in order and
//! stops at its limit instead of collecting and sorting every due row,
//! which a planner that believes the table empty judges cheaper.
//!
//! # Failures
//!
//! Connections come from a `deadpool-postgres` pool, which replaces closed
//! connections (after a server restart) on the next use. Errors carry the
//! password-free URL and say when the server is unreachable. `renew` and
//! `settle` are idempotent (they match the lease nonce), so they are
//! retried through connection errors for [`PostgresOptions::retry_for`];
//! lease errors are backed off by the worker pool; a push error is returned
//! to the caller, so nothing acknowledged as pushed is lost.

mod admin;
mod hosts;
mod migrate;
mod push;
mod queue;
mod statements;
mod vacuum;
mod wake;

#[cfg(test)]
mod rows_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{OnceCell, watch};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub use self::migrate::SCHEMA_VERSION;
pub use self::queue::PostgresQueue;
use self::statements::{Statements, channel, fill};
use super::redis::redact;
use super::util::Handles;
use super::{BaseQueue, QueueError, QueueStore, validate_name};
use crate::clock::Clock;

/// Settings of the PostgreSQL backend, read from the host configuration's
/// `[postgres]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresOptions {
    /// Most tasks (pending, delayed and leased) one queue holds; unbounded
    /// when absent. A bounded push counts the queue's rows, so leave it
    /// unset for large queues.
    pub capacity: Option<usize>,
    /// How long a push waits for room in a full queue before failing.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
    /// Most dead letters kept per queue; older ones are dropped.
    pub dead_capacity: usize,
    /// The schema holding taskhost's tables and functions.
    pub schema: String,
    /// Most connections one host opens (the wake listener has its own).
    pub pool_size: usize,
    /// How long renew and settle keep retrying through connection errors.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Tasks this host settles between its `VACUUM`s of the tasks table
    /// (see `vacuum.rs`); 0 leaves it to autovacuum.
    pub vacuum_every: u64,
    /// Most tasks a push stores in one row (see migration 5); a lease of
    /// at least this many takes rows whole.
    pub tasks_per_row: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            capacity: None,
            push_timeout: Duration::from_secs(2),
            dead_capacity: 10_000,
            schema: "taskhost".into(),
            pool_size: 8,
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            vacuum_every: 50_000,
            tasks_per_row: 100,
        }
    }
}

impl PostgresOptions {
    /// Checks values the backend cannot work with.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.capacity == Some(0)
            || self.dead_capacity == 0
            || self.pool_size == 0
            || self.tasks_per_row == 0
        {
            return Err(QueueError::Config(
                "postgres.capacity, postgres.dead_capacity, postgres.pool_size and \
                 postgres.tasks_per_row must be at least 1"
                    .into(),
            ));
        }
        // The wake channel `<schema>.wake` must fit Postgres's 63-byte names.
        if self.schema.is_empty()
            || self.schema.len() > 50
            || !self
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(QueueError::Config(format!(
                "postgres.schema {:?} must be 1-50 ASCII letters, digits or _",
                self.schema
            )));
        }
        Ok(())
    }
}

/// State shared by a store and its queues.
struct Shared {
    url: String,
    pool: Pool,
    config: tokio_postgres::Config,
    opts: PostgresOptions,
    clock: Arc<dyn Clock>,
    sql: Statements,
    /// Set once the schema is at this binary's version.
    migrated: OnceCell<()>,
    /// The registered host whose id leases taken through this store
    /// record as holder; none before it registers (such leases come back
    /// only when they expire).
    holder: std::sync::Mutex<Option<Arc<str>>>,
    /// Tasks settled through this store, for `vacuum.rs`.
    settled: std::sync::atomic::AtomicU64,
    /// This host's last registration (its machine and data directory).
    me: std::sync::Mutex<Option<crate::queue::HostInfo>>,
    /// Per queue name: woken when Postgres says work arrived.
    /// Per-queue wake-ups and the listener ringing them.
    wakes: crate::queue::wakes::Wakes,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// A pooled connection.
type Conn = deadpool_postgres::Object;

impl Shared {
    /// A queue error naming the URL.
    fn error(&self, message: String) -> QueueError {
        QueueError::Postgres {
            url: self.url.clone(),
            message,
        }
    }

    /// Runs `sql` with `params` on a pooled connection; its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, QueueError> {
        let conn = self.conn().await?;
        conn.query(sql, params).await.map_err(|e| self.pg_error(e))
    }

    /// Runs `sql` with `params` on a pooled connection; the rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, QueueError> {
        let conn = self.conn().await?;
        conn.execute(sql, params)
            .await
            .map_err(|e| self.pg_error(e))
    }

    /// A driver error, saying so when the server is unreachable.
    fn pg_error(&self, e: tokio_postgres::Error) -> QueueError {
        match e.as_db_error() {
            // Class 08 (connection exception) and 57 (operator
            // intervention: shutdown, crash, still starting) mean the
            // server went away or is not back yet: retry like a lost socket.
            Some(db) if matches!(db.code().code().get(..2), Some("08" | "57")) => {
                self.error(format!(
                    "PostgreSQL is unreachable: {}: {}",
                    db.code().code(),
                    db.message()
                ))
            }
            Some(db) => self.error(format!("{}: {}", db.code().code(), db.message())),
            None => self.error(format!("PostgreSQL is unreachable: {e}")),
        }
    }

    /// A connection, with the schema migrated to this binary's version.
    async fn conn(&self) -> Result<Conn, QueueError> {
        let mut conn = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.pg_error(e),
            e => self.error(format!("PostgreSQL is unreachable: {e}")),
        })?;
        self.migrated
            .get_or_try_init(|| async {
                migrate::migrate(&mut conn, &self.opts.schema)
                    .await
                    .map_err(|e| match e {
                        migrate::Error::Db(e) => self.pg_error(e),
                        e => QueueError::Config(format!("{}: {e}", self.url)),
                    })
            })
            .await?;
        Ok(conn)
    }

    /// Runs `sql` on `c` as a statement prepared once per connection;
    /// returns its rows.
    async fn query_cached(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, QueueError> {
        let stmt = c.prepare_cached(sql).await.map_err(|e| self.pg_error(e))?;
        c.query(&stmt, params).await.map_err(|e| self.pg_error(e))
    }
}

/// A tuple read from a row's first columns.
trait Columns: Sized {
    /// Columns 0, 1, ... of `r`, one per element.
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error>;
}

macro_rules! columns {
    ($($t:ident $i:tt),+) => {
        impl<$($t: for<'a> tokio_postgres::types::FromSql<'a>),+> Columns for ($($t,)+) {
            fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
                Ok(($(r.try_get::<_, $t>($i)?,)+))
            }
        }
    };
}
columns!(A 0, B 1);
columns!(A 0, B 1, C 2);
columns!(A 0, B 1, C 2, D 3, E 4);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);

/// The first columns of `r` as a tuple of the types asked for.
fn columns<T: Columns>(r: &Row) -> Result<T, tokio_postgres::Error> {
    T::from_row(r)
}

/// Whether a queue error is a lost connection worth retrying.
fn transient(e: &QueueError) -> bool {
    matches!(e, QueueError::Postgres { message, .. } if message.starts_with("PostgreSQL is unreachable"))
}

/// Named queues in one PostgreSQL database.
#[derive(Debug)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    queues: Handles<PostgresQueue>,
}

impl PostgresStore {
    /// A store on the database at `url` (`postgres://user:pass@host:port/db`
    /// or `postgresql://...`); connects, and creates or upgrades the schema,
    /// on first use.
    ///
    /// Must be called inside a tokio runtime.
    pub fn open(
        url: &str,
        opts: PostgresOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        opts.validate()?;
        let shown = redact(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| QueueError::Config(format!("queue URL {shown}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("taskhost");
        }
        // Every statement of the host walks an index in order (see "Plans"
        // in the module doc).
        const PLANS: &str = "-c enable_seqscan=off -c enable_bitmapscan=off";
        let options = match config.get_options() {
            Some(o) => format!("{o} {PLANS}"),
            None => PLANS.to_owned(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| QueueError::Config(format!("queue URL {shown}: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                url: shown,
                pool,
                config,
                sql: Statements::new(&opts.schema),
                opts,
                clock,
                migrated: OnceCell::new(),
                holder: Default::default(),
                settled: Default::default(),
                me: Default::default(),
                wakes: Default::default(),
            }),
            queues: Handles::default(),
        })
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Whether the wake-up listener is listening (starts it if needed).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.shared.ensure_listening();
        self.shared.wakes.listening()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Queue handles may outlive the store; the listener must not.
        self.shared.wakes.cancel();
    }
}

#[async_trait]
impl QueueStore for PostgresStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        validate_name(name)?;
        let q = self
            .queues
            .get_or_open(name, || Ok(PostgresQueue::new(name, self.shared.clone())))?;
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        let rows = self.shared.query(&self.shared.sql.queues, &[]).await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.shared.pg_error(e)))
            .collect()
    }

    /// Checks that the database answers and its schema is usable.
    async fn ping(&self) -> Result<(), QueueError> {
        let conn = self.shared.conn().await?;
        conn.simple_query("SELECT 1")
            .await
            .map_err(|e| self.shared.pg_error(e))?;
        Ok(())
    }

    /// Stops the wake-up listener and waits for it; closes the pool.
    async fn close(&self) {
        self.shared.wakes.stop().await;
        self.shared.pool.close();
    }

    fn describe(&self) -> String {
        format!("postgres at {}", self.url())
    }

    fn registry(&self) -> Arc<dyn crate::queue::HostRegistry> {
        Arc::new(hosts::PostgresRegistry::new(self.shared.clone()))
    }
}

//! The PostgreSQL backend's throughput with one host, Harbor's
//! execution-status refresh through it, and its table size under steady
//! load, each on a private PostgreSQL server.
//!
//! `cargo bench -p taskhost --bench postgres_backend -- [OPTIONS]`
//!
//! Server-side figures: CPU is the postmaster's user + system time, with
//! that of its reaped children (`cutime`/`cstime`: every backend that
//! ended) and of its live children, from `/proc`; rows written are the
//! inserts, updates and deletes `pg_stat_user_tables` counts in the
//! queue's schema; WAL is `pg_current_wal_lsn()`'s advance. Each phase's
//! figures are read after its stores closed, so every backend that did its
//! work has ended and reported its statistics.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use taskhost::clock::{self, Clock};
use taskhost::plugin::Runtime;
use taskhost::queue::postgres::{PostgresOptions, PostgresStore};
use taskhost::queue::{NewTask, QueueStore};
use taskhost_fixtures::postgres::PostgresServer;

mod common;
use common::backend::{BackendArgs, lease_all, push_numbered};
use common::load_noop;

fn main() -> ExitCode {
    common::main(bench_postgres)
}

/// Options of the PostgreSQL backend bench.
#[derive(Debug, Args)]
struct BenchPostgresArgs {
    #[command(flatten)]
    common: BackendArgs<Case>,
    /// Tasks per second the steady run's producer pushes.
    #[arg(long, default_value_t = 20_000)]
    steady_rate: usize,
    /// Tasks a host settles between its VACUUMs of the tasks table (0: autovacuum only).
    #[arg(long, default_value_t = PostgresOptions::default().vacuum_every)]
    vacuum_every: u64,
    /// Random payloads, which TOAST cannot compress, instead of one byte repeated.
    #[arg(long)]
    random_payloads: bool,
}

/// The cases of this bench, in the order they run by default.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Case {
    /// The server's cost of each statement alone.
    Statements,
    /// One host pushing while its pool drains.
    OneHost,
    /// Harbor's status refresh drained by several hosts.
    Harbor,
    /// A steady producer, with the table size as the work goes on.
    Steady,
}

/// Server-side cost between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
struct PgCost {
    /// user + system CPU seconds of the server's processes.
    cpu: f64,
    /// Rows inserted, updated and deleted in the queue's schema.
    rows: i64,
    /// WAL bytes written.
    wal: f64,
    /// Transactions committed.
    commits: i64,
}

impl std::ops::Sub for PgCost {
    type Output = PgCost;
    fn sub(self, o: PgCost) -> PgCost {
        PgCost {
            cpu: self.cpu - o.cpu,
            rows: self.rows - o.rows,
            wal: self.wal - o.wal,
            commits: self.commits - o.commits,
        }
    }
}

/// `(utime + stime, cutime + cstime, ppid)` in clock ticks from `/proc/PID/stat`.
fn proc_times(pid: &str) -> Option<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(11)? + n(12)?, n(13)? + n(14)?, u32::try_from(n(1)?).ok()?))
}

/// CPU seconds of the postmaster `pid`, its reaped children and its live ones.
fn server_cpu(pid: u32) -> Result<f64> {
    // SAFETY: sysconf has no memory effects.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (own, reaped, _) = proc_times(&pid.to_string()).context("reading the postmaster's CPU")?;
    let mut ticks = own + reaped;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        let Some(p) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((t, _, ppid)) = proc_times(p)
            && ppid == pid
        {
            ticks += t;
        }
    }
    Ok(ticks as f64 / tick)
}

async fn client(server: &PostgresServer) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The one row `sql` answers.
async fn one_row(c: &tokio_postgres::Client, sql: &str) -> Result<tokio_postgres::Row> {
    Ok(c.query_one(sql, &[]).await?)
}

async fn snapshot(server: &PostgresServer) -> Result<PgCost> {
    let c = client(server).await?;
    let rows: i64 = one_row(
        &c,
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
         FROM pg_stat_user_tables WHERE schemaname = 'taskhost'",
    )
    .await?
    .get(0);
    let wal = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8";
    let wal: f64 = one_row(&c, wal).await?.get(0);
    let commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let commits: i64 = one_row(&c, commits).await?.get(0);
    drop(c);
    let pid = server.pid().context("the server is not running")?;
    Ok(PgCost {
        cpu: server_cpu(pid)?,
        rows,
        wal,
        commits,
    })
}

/// Bytes of the queue's tables with their indexes and TOAST.
async fn table_bytes(server: &PostgresServer) -> Result<(i64, i64)> {
    let c = client(server).await?;
    let r = one_row(
        &c,
        "SELECT pg_total_relation_size('taskhost.tasks'), pg_total_relation_size('taskhost.dead')",
    )
    .await?;
    Ok((r.get(0), r.get(1)))
}

fn mib(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn report(what: &str, wall: Duration, cost: PgCost, per: usize, per_name: &str) {
    let per = per.max(1) as f64;
    println!(
        "  {what:<26} wall {:>7.2}s  Postgres CPU {:>6.2}s ({:.2} us/{per_name})  rows written {:.2}/{per_name}  WAL {:.0} B/{per_name}  commits {:.3}/{per_name}",
        wall.as_secs_f64(),
        cost.cpu,
        cost.cpu * 1e6 / per,
        cost.rows as f64 / per,
        cost.wal / per,
        cost.commits as f64 / per,
    );
}

async fn bench_postgres(a: BenchPostgresArgs) -> Result<()> {
    common::RANDOM_PAYLOADS.store(a.random_payloads, Ordering::Relaxed);
    let _ = OPTIONS.set(PostgresOptions {
        vacuum_every: a.vacuum_every,
        ..PostgresOptions::default()
    });
    let runtime = Runtime::new()?;
    a.common
        .print_header("postgres_backend", "private PostgreSQL");
    for case in a.common.cases() {
        match case {
            Case::Statements => statements(&a).await?,
            Case::OneHost => one_host(&a, &runtime).await?,
            Case::Harbor => harbor(&a, &runtime).await?,
            Case::Steady => steady(&a, &runtime).await?,
        }
    }
    runtime.shutdown();
    Ok(())
}

async fn start_server() -> Result<PostgresServer> {
    tokio::task::spawn_blocking(PostgresServer::start).await?
}

/// The settings every store of a run uses.
static OPTIONS: std::sync::OnceLock<PostgresOptions> = std::sync::OnceLock::new();

fn store(server: &PostgresServer, clock: Arc<dyn Clock>) -> Result<Arc<PostgresStore>> {
    let opts = OPTIONS.get().cloned().unwrap_or_default();
    Ok(Arc::new(PostgresStore::open(&server.url(), opts, clock)?))
}

/// The server's cost of each statement alone: one client pushes tasks
/// (without, then with unique keys) in batches, leases them all, acks them
/// all, one phase after the other.
async fn statements(a: &BenchPostgresArgs) -> Result<()> {
    let server = start_server().await?;
    let n = a.common.tasks.min(200_000);
    let b = a.common.batch_size;
    println!("Postgres cost per task of each statement, {n} tasks, batch {b}, one client:");
    for keyed in [false, true] {
        let label = if keyed { "unique key" } else { "no key" };
        let phase = |name: &'static str, t: Instant, before: PgCost| {
            let server = &server;
            async move {
                let now = snapshot(server).await?;
                let c = now - before;
                println!(
                    "  {name:<5} ({label:<10}) {:>6.2} us/task wall, Postgres CPU {:>6.2} us/task, rows {:.2}/task, WAL {:.0} B/task",
                    t.elapsed().as_secs_f64() * 1e6 / n as f64,
                    c.cpu * 1e6 / n as f64,
                    c.rows as f64 / n as f64,
                    c.wal / n as f64,
                );
                anyhow::Ok(now)
            }
        };
        // One store per phase, closed before its figures are read.
        let mut at = snapshot(&server).await?;
        let s = store(&server, clock::system())?;
        let queue = s.queue(if keyed { "keyed" } else { "plain" })?;
        let t = Instant::now();
        push_numbered(&queue, n, b, keyed).await?;
        s.close().await;
        at = phase("push", t, at).await?;
        let s = store(&server, clock::system())?;
        let queue = s.queue(if keyed { "keyed" } else { "plain" })?;
        let t = Instant::now();
        let leased = lease_all(&queue, b).await?;
        let lease_wall = t;
        // Acks need the same handle (it holds the lease nonces): measure
        // the lease phase's server cost without closing the store.
        let mid = snapshot(&server).await?;
        let c = mid - at;
        println!(
            "  lease ({label:<10}) {:>6.2} us/task wall, Postgres CPU {:>6.2} us/task (backend still open: its row counts come with ack)",
            lease_wall.elapsed().as_secs_f64() * 1e6 / n as f64,
            c.cpu * 1e6 / n as f64,
        );
        let t = Instant::now();
        for chunk in leased.chunks(b) {
            queue.ack(chunk).await?;
        }
        s.close().await;
        phase("ack", t, mid).await?;
        if leased.len() != n {
            bail!("leased {} of {n} tasks", leased.len());
        }
    }
    Ok(())
}

/// One host pushes `tasks` while its pool drains them through the no-op component.
async fn one_host(a: &BenchPostgresArgs, runtime: &Runtime) -> Result<()> {
    let server = start_server().await?;
    let clock = clock::system();
    let store = store(&server, clock.clone())?;
    store.ping().await?; // the schema exists before the clock starts
    let plugin = load_noop(runtime, &a.common.plugin, store.clone())?;
    let before = snapshot(&server).await?;
    let n = a.common.tasks;
    let (e2e, drain) =
        common::throughput(a.common.shape(), store.clone(), Arc::new(plugin), n, clock).await?;
    let wall = Duration::from_secs_f64(n as f64 / e2e);
    store.close().await;
    let cost = snapshot(&server).await? - before;
    println!(
        "one host, Postgres queue, wasm no-op: {n} tasks pushed and done in {:.2}s = {e2e:.0} tasks/s end to end ({drain:.0} tasks/s drain once the pushes were done)",
        wall.as_secs_f64(),
    );
    report("push + lease + ack", wall, cost, n, "task");
    let (tasks, dead) = table_bytes(&server).await?;
    println!(
        "  after the run: tasks table {:.1} MiB, dead letters {:.1} MiB (indexes and TOAST included)",
        mib(tasks),
        mib(dead)
    );
    Ok(())
}

/// Harbor's outdated marks as pushes keyed by execution id, drained by
/// `hosts` hosts, each with its own store (connections) and pool.
async fn harbor(a: &BenchPostgresArgs, runtime: &Runtime) -> Result<()> {
    let server = start_server().await?;
    let clock = clock::system();
    let n = a.common.executions;
    println!(
        "Harbor scenario, {n} executions marked outdated {}x, {} hosts draining through the Postgres queue (the no-op plugin):",
        a.common.marks, a.common.hosts
    );
    let marker_store = store(&server, clock.clone())?;
    marker_store.ping().await?;
    let before = snapshot(&server).await?;
    let t = Instant::now();
    let marker = marker_store.queue("status-refresh")?;
    let created = common::harbor::mark(&marker, n, a.common.marks).await?;
    let mark_wall = t.elapsed();
    marker_store.close().await;
    let marked = snapshot(&server).await?;
    report(
        "mark (push, unique key)",
        mark_wall,
        marked - before,
        n * a.common.marks,
        "mark",
    );
    let t = Instant::now();
    let mut pools = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..a.common.hosts {
        let store = store(&server, clock.clone())?;
        let plugin = load_noop(runtime, &a.common.plugin, store.clone())?;
        let queue = store.queue("status-refresh")?;
        pools.push(a.common.start_pool(queue, plugin, clock.clone())?);
        stores.push(store);
    }
    let per_host = common::harbor::drain(pools, created).await;
    let wall = t.elapsed();
    for s in stores {
        s.close().await;
    }
    let cost = snapshot(&server).await? - marked;
    report("drain (lease + ack)", wall, cost, n, "execution");
    println!(
        "  refreshes per execution {:.3} ({created} tasks for {n} executions; per host {per_host:?})",
        per_host.iter().sum::<u64>() as f64 / n as f64,
    );
    let total = snapshot(&server).await? - before;
    report("mark + drain", mark_wall + wall, total, n, "execution");
    Ok(())
}

/// A producer pushes `tasks` at `steady_rate` while one host drains them;
/// the queue's table size is printed as the work goes on, to show it stays
/// as large as the backlog (acked rows are deleted and their space reused).
async fn steady(a: &BenchPostgresArgs, runtime: &Runtime) -> Result<()> {
    let server = start_server().await?;
    let clock = clock::system();
    let store = store(&server, clock.clone())?;
    store.ping().await?;
    let queue = store.queue("bench")?;
    let plugin = load_noop(runtime, &a.common.plugin, store.clone())?;
    let n = a.common.tasks;
    println!(
        "steady load: {n} tasks pushed at {} tasks/s in pushes of 100 while one host drains them:",
        a.steady_rate
    );
    let pool = a.common.start_pool(queue.clone(), plugin, clock)?;
    let stats = pool.stats();
    let producer = {
        let queue = queue.clone();
        let rate = a.steady_rate.max(100) as f64;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut pushed = 0usize;
            while pushed < n {
                let due = start + Duration::from_secs_f64(pushed as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let k = (n - pushed).min(100);
                queue
                    .push_batch(
                        (0..k)
                            .map(|_| NewTask::new(common::hundred_bytes()))
                            .collect(),
                    )
                    .await?;
                pushed += k;
            }
            anyhow::Ok(())
        })
    };
    let start = Instant::now();
    let mut next = n / 10;
    let mut peak = 0i64;
    loop {
        let done = stats.done.load(Ordering::Relaxed) as usize;
        let (tasks, _) = table_bytes(&server).await?;
        peak = peak.max(tasks);
        if done >= next || done >= n {
            println!(
                "  {:>7} done at {:>6.1}s: tasks table {:>6.1} MiB (peak so far {:.1} MiB)",
                done,
                start.elapsed().as_secs_f64(),
                mib(tasks),
                mib(peak)
            );
            next += n / 10;
        }
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producer.await.context("producer task")??;
    pool.shutdown().await;
    store.close().await;
    Ok(())
}

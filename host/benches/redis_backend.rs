//! The Redis backend's throughput with one host, and Harbor's
//! execution-status refresh done through the queue versus Harbor's
//! SCAN-and-refresh, each on a private `redis-server`.
//!
//! `cargo bench -p taskhost --bench redis_backend -- [OPTIONS]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use taskhost::clock::{self, Clock};
use taskhost::plugin::Runtime;
use taskhost::queue::QueueStore;
use taskhost::queue::redis::{RedisOptions, RedisStore};
use taskhost_fixtures::redis::{RedisServer, info_fields};

mod common;
use common::backend::{BackendArgs, lease_all, push_numbered};
use common::{load_built, load_noop};

fn main() -> ExitCode {
    common::main(bench_redis)
}

/// Options of the Redis backend bench.
#[derive(Debug, Args)]
struct BenchRedisArgs {
    #[command(flatten)]
    common: BackendArgs<Case>,
    /// The status-refresh component (for the harbor-refresh case).
    #[arg(
        long,
        default_value = "target/wasm/wasm32-wasip2/plugin/status_refresh.wasm"
    )]
    status_plugin: PathBuf,
}

/// The cases of this bench, in the order they run by default.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Case {
    /// Redis's cost of each queue script alone.
    Scripts,
    /// One host pushing while its pool drains.
    OneHost,
    /// Harbor's status refresh through the queue, drained by no-op hosts.
    HarborQueue,
    /// The same, drained by the status-refresh plugin.
    HarborRefresh,
    /// Harbor's own SCAN-and-refresh, for comparison.
    HarborScan,
}

/// Redis-side cost between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCost {
    /// Commands sent by clients (an EVALSHA counts once).
    client_commands: u64,
    /// Every command Redis ran, those run inside scripts included.
    all_commands: u64,
    /// Script calls (EVALSHA/EVAL).
    scripts: u64,
    /// user + sys CPU seconds of the server process.
    cpu: f64,
    /// Seconds Redis spent inside script calls (commandstats `usec`).
    script_secs: f64,
}

/// Commands the queue's Lua scripts run. Redis counts them in INFO like
/// client commands; the bench sends none of them itself on the queue runs.
const SCRIPT_INNER: &[&str] = &[
    "incr",
    "incrby",
    "decrby",
    "get",
    "set",
    "publish",
    "ltrim",
    "hset",
    "hget",
    "hexists",
    "hmget",
    "hincrby",
    "hdel",
    "llen",
    "lpop",
    "rpop",
    "rpush",
    "lpush",
    "lrange",
    "zcard",
    "zadd",
    "zrem",
    "zrangebyscore",
    "zremrangebyscore",
    "zcount",
    "zmscore",
    "zscore",
    "del",
];

fn snapshot(server: &RedisServer) -> Result<RedisCost> {
    let stats = server.command(&["INFO", "commandstats"])?;
    let mut c = RedisCost::default();
    let mut inner = 0;
    for (k, v) in info_fields(&stats) {
        let Some(name) = k.strip_prefix("cmdstat_") else {
            continue;
        };
        let calls: u64 = v
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        c.all_commands += calls;
        if name == "evalsha" || name == "eval" {
            c.scripts += calls;
            c.script_secs += v
                .split(',')
                .find_map(|f| f.strip_prefix("usec="))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1e6;
        }
        if SCRIPT_INNER.contains(&name) {
            inner += calls;
        }
    }
    // Without scripts every command came from a client (the SCAN runs).
    c.client_commands = if c.scripts > 0 {
        c.all_commands - inner
    } else {
        c.all_commands
    };
    for (k, v) in info_fields(&server.command(&["INFO", "cpu"])?) {
        if k == "used_cpu_user" || k == "used_cpu_sys" {
            c.cpu += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(c)
}

impl std::ops::Sub for RedisCost {
    type Output = RedisCost;
    fn sub(self, o: RedisCost) -> RedisCost {
        RedisCost {
            client_commands: self.client_commands.saturating_sub(o.client_commands),
            all_commands: self.all_commands.saturating_sub(o.all_commands),
            scripts: self.scripts.saturating_sub(o.scripts),
            cpu: self.cpu - o.cpu,
            script_secs: self.script_secs - o.script_secs,
        }
    }
}

/// Reports the `marks` marks made since `t`, with Redis's figures `before`
/// them; answers Redis's figures after them.
fn report_marks(
    what: &str,
    t: Instant,
    server: &RedisServer,
    before: RedisCost,
    marks: usize,
) -> Result<RedisCost> {
    let wall = t.elapsed();
    let after = snapshot(server)?;
    report(what, wall, after - before, marks, "mark");
    Ok(after)
}

fn report(what: &str, wall: Duration, cost: RedisCost, per: usize, per_name: &str) {
    let per = per.max(1) as f64;
    println!(
        "  {what:<26} wall {:>8.2}s  Redis CPU {:>7.2}s (in scripts {:.2}s)  client commands {:>9} ({:.4}/{per_name})  all commands {:>10} ({:.2}/{per_name})",
        wall.as_secs_f64(),
        cost.cpu,
        cost.script_secs,
        cost.client_commands,
        cost.client_commands as f64 / per,
        cost.all_commands,
        cost.all_commands as f64 / per,
    );
}

async fn bench_redis(a: BenchRedisArgs) -> Result<()> {
    let runtime = Runtime::new()?;
    a.common
        .print_header("redis_backend", "private redis-server");
    let (mut queue_cost, mut scan_cost) = (None, None);
    for case in a.common.cases() {
        match case {
            Case::Scripts => scripts(&a).await?,
            Case::OneHost => one_host(&a, &runtime).await?,
            Case::HarborQueue => {
                queue_cost = Some(harbor_queue(&a, &runtime, Drain::Noop).await?);
            }
            Case::HarborRefresh => {
                harbor_queue(&a, &runtime, Drain::StatusRefresh).await?;
            }
            Case::HarborScan => scan_cost = Some(harbor_scan(&a).await?),
        }
    }
    if let (Some(q), Some(s)) = (queue_cost, scan_cost) {
        println!(
            "Harbor: Redis CPU of SCAN-and-refresh / queue drain = {:.2}s / {:.2}s = {:.1}x; client commands per execution {:.4} vs {:.4}",
            s.cpu,
            q.cpu,
            s.cpu / q.cpu.max(1e-9),
            s.client_commands as f64 / a.common.executions.max(1) as f64,
            q.client_commands as f64 / a.common.executions.max(1) as f64,
        );
    }
    runtime.shutdown();
    Ok(())
}

fn store(server: &RedisServer, clock: Arc<dyn Clock>) -> Result<Arc<RedisStore>> {
    Ok(Arc::new(RedisStore::open(
        &server.url(),
        RedisOptions::default(),
        clock,
    )?))
}

/// Redis's cost of each queue script alone: one client pushes `tasks`
/// (without, then with unique keys), leases them all and acks them all, in
/// batches, one phase after the other, so each phase's `EVALSHA` time is
/// one script's.
async fn scripts(a: &BenchRedisArgs) -> Result<()> {
    let server = RedisServer::start()?;
    let clock = clock::system();
    let queue = store(&server, clock)?.queue("scripts")?;
    let n = a.common.tasks.min(200_000);
    let b = a.common.batch_size;
    println!("Redis cost per task of each script, {n} tasks, batch {b}, one client:");
    for keyed in [false, true] {
        let label = if keyed { "unique key" } else { "no key" };
        let phase = |name: &str, before: RedisCost| -> Result<RedisCost> {
            let now = snapshot(&server)?;
            let c = now - before;
            println!(
                "  {name:<7} ({label:<10}) {:>6.2} us/task in scripts, Redis CPU {:>6.2} us/task, {:.4} script calls/task",
                c.script_secs * 1e6 / n as f64,
                c.cpu * 1e6 / n as f64,
                c.scripts as f64 / n as f64
            );
            Ok(now)
        };
        let mut at = snapshot(&server)?;
        push_numbered(&queue, n, b, keyed).await?;
        at = phase("push", at)?;
        let leased = lease_all(&queue, b).await?;
        at = phase("lease", at)?;
        for chunk in leased.chunks(b) {
            queue.ack(chunk).await?;
        }
        phase("ack", at)?;
        if leased.len() != n {
            bail!("leased {} of {n} tasks", leased.len());
        }
    }
    Ok(())
}

/// One host pushes `tasks` while its pool drains them through the no-op component.
async fn one_host(a: &BenchRedisArgs, runtime: &Runtime) -> Result<()> {
    let server = RedisServer::start()?;
    let clock = clock::system();
    let store = store(&server, clock.clone())?;
    let queue = store.queue("bench")?;
    let plugin = load_noop(runtime, &a.common.plugin, store.clone())?;
    let before = snapshot(&server)?;
    let start = Instant::now();
    let pool = a.common.start_pool(queue.clone(), plugin, clock)?;
    let n = a.common.tasks;
    common::push_hundred_byte_tasks(&queue, n).await?;
    let stats = pool.stats();
    while (stats.done.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = start.elapsed();
    pool.shutdown().await;
    let cost = snapshot(&server)? - before;
    println!(
        "one host, Redis queue, wasm no-op: {n} tasks pushed and done in {:.2}s = {:.0} tasks/s end to end",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    report("push + lease + ack", wall, cost, n, "task");
    Ok(())
}

fn execution_key(i: usize) -> String {
    format!("execution:id:{i}:vendor:REPLICATION:status_outdate")
}

/// What the hosts of the Harbor queue case run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The no-op component: the queue's own cost, comparable with SCAN's.
    Noop,
    /// The status-refresh plugin: each refresh also pushes its result, keyed
    /// by execution id, to the follow-up queue `execution-status`.
    StatusRefresh,
}

/// Harbor's outdated marks as queue pushes (unique key = execution id),
/// drained by `hosts` hosts, each with its own connection and pool.
async fn harbor_queue(a: &BenchRedisArgs, runtime: &Runtime, drain: Drain) -> Result<RedisCost> {
    let server = RedisServer::start()?;
    let clock = clock::system();
    let n = a.common.executions;
    let through = match drain {
        Drain::Noop => "the no-op plugin",
        Drain::StatusRefresh => "status-refresh, results pushed to a follow-up queue",
    };
    println!(
        "Harbor scenario, {n} executions marked outdated {}x, {} hosts draining through the Redis queue ({through}):",
        a.common.marks, a.common.hosts
    );
    let before = snapshot(&server)?;
    let t = Instant::now();
    let marker = store(&server, clock.clone())?.queue("status-refresh")?;
    let created = common::harbor::mark(&marker, n, a.common.marks).await?;
    let marked = report_marks(
        "mark (push, unique key)",
        t,
        &server,
        before,
        n * a.common.marks,
    )?;
    let t = Instant::now();
    let mut pools = Vec::new();
    for _ in 0..a.common.hosts {
        let store = store(&server, clock.clone())?;
        let plugin = match drain {
            Drain::Noop => load_noop(runtime, &a.common.plugin, store.clone())?,
            Drain::StatusRefresh => load_built(
                runtime,
                &a.status_plugin,
                store.clone(),
                "status-refresh",
                // Names (and so grants) the queue its results go to.
                [("output_queue".to_string(), "execution-status".to_string())].into(),
            )?,
        };
        let queue = store.queue("status-refresh")?;
        pools.push(a.common.start_pool(queue, plugin, clock.clone())?);
    }
    let per_host = common::harbor::drain(pools, created).await;
    let wall = t.elapsed();
    let cost = snapshot(&server)? - marked;
    let what = match drain {
        Drain::Noop => "drain (lease + ack)",
        Drain::StatusRefresh => "drain (+ result push)",
    };
    report(what, wall, cost, n, "execution");
    if drain == Drain::StatusRefresh {
        let results = store(&server, clock.clone())?
            .queue("execution-status")?
            .stats()
            .await?;
        if results.pending != n as u64 {
            bail!(
                "{} status results queued for {n} executions",
                results.pending
            );
        }
        println!(
            "  status results queued: {} (one per execution)",
            results.pending
        );
    }
    println!(
        "  refreshes per execution {:.3} ({} tasks for {n} executions; per host {per_host:?})",
        per_host.iter().sum::<u64>() as f64 / n as f64,
        created
    );
    Ok(cost)
}

/// Harbor's old way: SET a key per mark, then `hosts` scanners SCAN for the
/// keys, refresh each execution they find and DEL its key, until a full
/// pass finds none.
async fn harbor_scan(a: &BenchRedisArgs) -> Result<RedisCost> {
    let server = RedisServer::start()?;
    let n = a.common.executions;
    println!(
        "Harbor scenario, {n} executions marked outdated {}x, {} processes doing SCAN-and-refresh:",
        a.common.marks, a.common.hosts
    );
    let client = redis::Client::open(server.url())?;
    let before = snapshot(&server)?;
    let t = Instant::now();
    let mut conn = client.get_multiplexed_async_connection().await?;
    for _ in 0..a.common.marks {
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let mut p = redis::pipe();
            for &i in chunk {
                p.set(execution_key(i), "").ignore();
            }
            p.query_async::<()>(&mut conn).await?;
        }
    }
    let marked = report_marks("mark (SET)", t, &server, before, n * a.common.marks)?;
    let refreshes = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut scanners = Vec::new();
    for _ in 0..a.common.hosts {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let refreshes = refreshes.clone();
        scanners.push(tokio::spawn(async move {
            loop {
                let mut cursor = 0u64;
                let mut found = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("execution:id:*vendor:*status_outdate")
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut conn)
                        .await?;
                    found += keys.len() as u64;
                    // Refresh each execution (the database work Harbor does
                    // is the same either way), then clear its mark.
                    for key in &keys {
                        refreshes.fetch_add(1, Ordering::Relaxed);
                        redis::cmd("DEL")
                            .arg(key)
                            .query_async::<()>(&mut conn)
                            .await?;
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                if found == 0 {
                    return anyhow::Ok(());
                }
            }
        }));
    }
    for s in scanners {
        s.await.context("scanner task")??;
    }
    let wall = t.elapsed();
    let cost = snapshot(&server)? - marked;
    report("SCAN + refresh + DEL", wall, cost, n, "execution");
    println!(
        "  refreshes per execution {:.3}",
        refreshes.load(Ordering::Relaxed) as f64 / n as f64
    );
    Ok(cost)
}

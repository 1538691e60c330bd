//! Redis crash recovery: a fleet leases every task of a big queue and dies
//! without settling; a recovering host then leases (reclaiming the expired
//! batches) and acks until the queue is empty. Reports the longest single
//! script Redis ran during recovery (from `SLOWLOG`): every other host
//! waits that long, and a script that has written cannot be killed.
//! Target (issue 14 item 6): at most 50 ms.
//!
//! `cargo bench -p taskhost --bench redis_recovery -- --tasks 200000`
//! (options: `--tasks N` default 1,000,000, `--payload BYTES` default 1024,
//! `--batch N` default 100, `--workers N` default 4, `--script-elements N`
//! and `--script-bytes N` for the recovering host's per-call budget,
//! default the backend's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use redis::Value;
use taskhost::clock::ManualClock;
use taskhost::queue::redis::{RedisOptions, RedisStore};
use taskhost::queue::{BaseQueue, NewTask, QueueStore, Task};
use taskhost_fixtures::redis::RedisServer;

mod common;

/// Options of the recovery benchmark.
#[derive(Debug, clap::Args)]
struct Opts {
    /// Tasks the fleet leases before it crashes.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Tasks per lease.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Workers of the recovering host.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The recovering host's per-call element budget (the backend's default when absent).
    #[arg(long)]
    script_elements: Option<usize>,
    /// The recovering host's per-call byte budget (the backend's default when absent).
    #[arg(long)]
    script_bytes: Option<usize>,
}

fn main() -> std::process::ExitCode {
    common::main(|o: Opts| async move {
        if o.tasks == 0 || o.batch == 0 || o.workers == 0 {
            bail!("--tasks, --batch and --workers must be at least 1");
        }
        run(o).await
    })
}

const TTL: Duration = Duration::from_secs(60);
const QUEUE: &str = "recovery";

async fn run(o: Opts) -> Result<()> {
    let server = RedisServer::start()?;
    let client = redis::Client::open(server.url())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let clock = ManualClock::new(1_700_000_000_000);
    let defaults = RedisOptions::default();
    let recovering = RedisOptions {
        script_elements: o.script_elements.unwrap_or(defaults.script_elements),
        script_bytes: o.script_bytes.unwrap_or(defaults.script_bytes),
        ..RedisOptions::default()
    };
    println!(
        "budget per script call: {} elements, {} bytes",
        recovering.script_elements, recovering.script_bytes
    );
    let store = |c: &Arc<ManualClock>, opts: &RedisOptions| -> Result<RedisStore> {
        Ok(RedisStore::open(&server.url(), opts.clone(), c.clone())?)
    };

    // The queue: `tasks` tasks of `payload` bytes.
    let fleet = store(&clock, &defaults)?;
    let q = fleet.queue(QUEUE)?;
    let started = Instant::now();
    let body = vec![b'x'; o.payload];
    let mut pushed = 0;
    while pushed < o.tasks {
        let n = (o.tasks - pushed).min(1_000);
        q.push_batch((0..n).map(|_| NewTask::new(body.clone())).collect())
            .await?;
        pushed += n;
    }
    println!(
        "pushed {} tasks of {} B in {:.1?}",
        o.tasks,
        o.payload,
        started.elapsed()
    );

    // The fleet leases everything, then dies without settling.
    let started = Instant::now();
    let mut leased = 0;
    loop {
        let got = q.lease(o.batch, TTL).await?;
        if got.is_empty() {
            break;
        }
        leased += got.len();
    }
    drop(q);
    fleet.close().await;
    drop(fleet);
    println!(
        "fleet leased {leased} in batches of {} in {:.1?}, then crashed",
        o.batch,
        started.elapsed()
    );
    if leased != o.tasks {
        bail!("the fleet leased {leased} of {} tasks", o.tasks);
    }

    // Recovery: the leases expire; a host reclaims and handles everything.
    clock.advance(TTL);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(1_000)
        .arg("slowlog-max-len")
        .arg(100_000)
        .exec_async(&mut admin)
        .await?;
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .exec_async(&mut admin)
        .await?;
    let host = store(&clock, &recovering)?;
    let q = host.queue(QUEUE)?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.workers {
        let q = q.clone();
        let batch = o.batch;
        workers.push(tokio::spawn(async move { drain(q, batch).await }));
    }
    let mut done = 0;
    let mut stats_calls = 0;
    // Stats while recovering, as `host status` would ask.
    while workers.iter().any(|w| !w.is_finished()) {
        q.stats().await?;
        stats_calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        done += w.await??;
    }
    let took = started.elapsed();
    let left = q.stats().await?;
    host.close().await;
    if done != o.tasks || !left.is_empty() {
        bail!("recovered {done} of {} tasks; {left:?} left", o.tasks);
    }
    println!(
        "recovered {done} tasks with {} workers in {took:.1?} ({:.0} tasks/s), {stats_calls} stats calls",
        o.workers,
        done as f64 / took.as_secs_f64()
    );

    let log: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(&mut admin)
        .await?;
    let entries = slow_entries(log);
    let scripts: Vec<_> = entries.iter().filter(|e| e.1 == "EVALSHA").collect();
    let over = scripts.iter().filter(|e| e.0 > 50_000).count();
    let mut us: Vec<i64> = scripts.iter().map(|e| e.0).collect();
    us.sort_unstable();
    if let (Some(p50), Some(p99)) = (us.get(us.len() / 2), us.get(us.len() * 99 / 100)) {
        println!(
            "scripts over 1 ms: median {:.2} ms, p99 {:.2} ms",
            *p50 as f64 / 1000.0,
            *p99 as f64 / 1000.0
        );
    }
    match scripts.iter().max_by_key(|e| e.0) {
        Some((us, _, args)) => println!(
            "longest script during recovery: {:.2} ms ({} script: {args}); {} scripts over 1 ms, {over} over 50 ms (target: none)",
            *us as f64 / 1000.0,
            script_name(args),
            scripts.len()
        ),
        None => println!("longest script during recovery: under 1 ms (SLOWLOG empty)"),
    }
    Ok(())
}

/// Leases and acks until the queue is empty; returns how many it acked.
async fn drain(q: Arc<dyn BaseQueue>, batch: usize) -> Result<usize> {
    let mut done = 0;
    loop {
        let got: Vec<Task> = q.lease(batch, TTL).await?;
        if got.is_empty() {
            // Another worker may still hold a part; the queue is empty
            // once nothing is left anywhere.
            if q.stats().await?.is_empty() {
                return Ok(done);
            }
            tokio::task::yield_now().await;
            continue;
        }
        let leases: Vec<_> = got.iter().map(Task::lease).collect();
        let s = q.ack(&leases).await?;
        if s.lost != 0 {
            bail!("{} acks lost during recovery", s.lost);
        }
        done += s.applied;
    }
}

/// Which of the backend's scripts an `EVALSHA` ran, from its hash.
fn script_name(args: &str) -> &'static str {
    const HELPERS: &str = include_str!("../src/queue/redis/scripts/helpers.lua");
    let with = |body: &str| {
        redis::Script::new(&format!("{HELPERS}{body}"))
            .get_hash()
            .to_owned()
    };
    let known = [
        (
            "lease",
            with(include_str!("../src/queue/redis/scripts/lease.lua")),
        ),
        (
            "settle",
            with(include_str!("../src/queue/redis/scripts/settle.lua")),
        ),
        (
            "renew",
            with(include_str!("../src/queue/redis/scripts/renew.lua")),
        ),
        (
            "push",
            with(include_str!("../src/queue/redis/scripts/push.lua")),
        ),
        (
            "stats",
            redis::Script::new(include_str!("../src/queue/redis/scripts/stats.lua"))
                .get_hash()
                .to_owned(),
        ),
    ];
    known
        .iter()
        .find(|(_, h)| args.starts_with(&h[..24]))
        .map_or("unknown", |(n, _)| n)
}

/// `SLOWLOG GET` entries as (microseconds, command, first arguments shown).
fn slow_entries(v: Value) -> Vec<(i64, String, String)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).chars().take(24).collect(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(f) = e else { return None };
            let us = match f.get(2)? {
                Value::Int(n) => *n,
                _ => return None,
            };
            let Value::Array(args) = f.get(3)? else {
                return None;
            };
            let cmd = text(args.first()?).to_uppercase();
            let shown: Vec<String> = args.iter().skip(1).take(6).map(text).collect();
            Some((us, cmd, shown.join(" ")))
        })
        .collect()
}

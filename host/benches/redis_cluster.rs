//! One queue on a private 3-master Redis Cluster, as 1 shard and as 3:
//! push and drain rates, and the CPU each master spent, so the split of
//! Redis work over the shards shows (on a 2-core machine the wall clock
//! cannot gain much; the per-master CPU is the point).
//!
//! `cargo bench -p taskhost --bench redis_cluster -- [--tasks N] [--workers W]`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use taskhost::clock;
use taskhost::queue::redis::{RedisOptions, RedisStore};
use taskhost::queue::{BaseQueue, NewTask, QueueStore};
use taskhost_fixtures::redis_cluster::RedisCluster;

mod common;

fn main() -> ExitCode {
    common::main(bench)
}

/// Options of the cluster bench.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// Tasks pushed, then drained, per run.
    #[arg(long, default_value_t = 300_000)]
    tasks: usize,
    /// Tasks per push and per lease.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Concurrent lease-and-ack loops (as many hosts' workers).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Shard counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    shards: Vec<usize>,
}

async fn bench(args: ClusterArgs) -> Result<()> {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await?
        .context("starting a 3-master Redis Cluster")?;
    println!(
        "Redis Cluster, 3 masters; {} tasks of 100 bytes, batches of {}, {} lease loops",
        args.tasks, args.batch_size, args.workers
    );
    println!(
        "| shards | push tasks/s | drain tasks/s | CPU s per master (drain) | busiest master's share |"
    );
    println!("|---|---|---|---|---|");
    for &n in &args.shards {
        let name = format!("bench-{n}");
        let opts = RedisOptions {
            shards: [(name.clone(), n)].into(),
            ..RedisOptions::default()
        };
        let store = RedisStore::open(&cluster.url(), opts, clock::system())?;
        store.ping().await?;
        let q = store.queue(&name)?;
        let pushed = Instant::now();
        let payload = vec![b'x'; 100];
        for chunk in (0..args.tasks).collect::<Vec<_>>().chunks(1_000) {
            let tasks = chunk
                .iter()
                .map(|_| NewTask::new(payload.clone()))
                .collect();
            q.push_batch(tasks).await?;
        }
        let push_secs = pushed.elapsed().as_secs_f64();
        let before = cpu(&cluster);
        let drained = Instant::now();
        drain(&q, args.tasks, args.batch_size, args.workers).await?;
        let drain_secs = drained.elapsed().as_secs_f64();
        let spent: Vec<f64> = cpu(&cluster)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let total: f64 = spent.iter().sum();
        let busiest = spent.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {n} | {:.0} | {:.0} | {} | {:.0} % |",
            args.tasks as f64 / push_secs,
            args.tasks as f64 / drain_secs,
            spent
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            100.0 * busiest / total.max(f64::EPSILON),
        );
        store.close().await;
    }
    Ok(())
}

/// CPU seconds each node has used.
fn cpu(cluster: &RedisCluster) -> Vec<f64> {
    (0..cluster.nodes().len())
        .map(|i| cluster.cpu_seconds(i).unwrap_or(0.0))
        .collect()
}

/// Leases and acks until `tasks` tasks are done, `workers` loops at once.
async fn drain(q: &Arc<dyn BaseQueue>, tasks: usize, batch: usize, workers: usize) -> Result<()> {
    let done = Arc::new(AtomicUsize::new(0));
    let loops = (0..workers).map(|_| {
        let (q, done) = (q.clone(), done.clone());
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < tasks {
                let got = q.lease(batch, Duration::from_secs(30)).await?;
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let leases: Vec<_> = got.iter().map(|t| t.lease()).collect();
                q.ack(&leases).await?;
                done.fetch_add(got.len(), Ordering::Relaxed);
            }
            Ok::<_, taskhost::queue::QueueError>(())
        })
    });
    for r in futures_util::future::join_all(loops).await {
        r??;
    }
    Ok(())
}

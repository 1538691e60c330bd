//! Real components in the plugin runtime: hostile plugins are contained,
//! script outcomes map to queue actions, host imports work.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use taskhost::backoff::Backoff;
use taskhost::clock;
use taskhost::plugin::{Limits, Plugin, PluginSpec, Runtime};
use taskhost::pool::{PoolConfig, WorkerPool};
use taskhost::queue::memory::{MemoryOptions, MemoryStore};
use taskhost::queue::{BaseQueue, NewTask, QueueStats, QueueStore};

fn testkit(runtime: &Runtime, store: Arc<dyn QueueStore>, mode: &str, limits: Limits) -> Plugin {
    let spec = PluginSpec {
        name: format!("testkit-{mode}"),
        path: support::plugin("testkit"),
        config: [("mode".to_string(), mode.to_string())].into(),
        dir: None,
        limits,
        allowed_hosts: Vec::new(),
    };
    runtime.load(spec, store).expect("testkit loads")
}

/// A pool serving `queue` with `plugin`, retrying fast.
fn serve(queue: &Arc<dyn BaseQueue>, plugin: Plugin, max_attempts: u32) -> WorkerPool {
    WorkerPool::start(
        queue.clone(),
        Arc::new(plugin),
        fast_retries(max_attempts),
        clock::system(),
    )
    .unwrap()
}

fn fast_retries(max_attempts: u32) -> PoolConfig {
    PoolConfig {
        batch_size: 10,
        max_workers: 2,
        max_attempts,
        max_latency: Duration::from_millis(1),
        // No jitter: a failed batch's tasks come back at the same moment and
        // so in one batch again, which the per-attempt counts rely on.
        retry_backoff: Backoff {
            jitter: 0.0,
            ..Backoff::new(Duration::from_millis(1), Duration::from_millis(5))
        },
        ..PoolConfig::default()
    }
}

fn memory_store() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new(MemoryOptions::default(), clock::system()))
}

/// Waits until the queue holds nothing but dead letters.
async fn settled(queue: &Arc<dyn BaseQueue>) -> QueueStats {
    loop {
        let s = queue.stats().await.unwrap();
        if s.is_empty() {
            return s;
        }
        queue.wait_for_work(Duration::from_millis(5)).await;
    }
}

async fn push(queue: &Arc<dyn BaseQueue>, payloads: &[&str]) {
    queue
        .push_batch(payloads.iter().map(|p| NewTask::new(*p)).collect())
        .await
        .unwrap();
}

/// Every hostile mode next to a healthy plugin in one host: the host stays
/// up, each hostile batch is retried and dead-lettered with a reason naming
/// the plugin and its limits, plugins that only misbehave in their host calls
/// are contained, and the healthy queue drains completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_their_batches_only() {
    let runtime = Runtime::new().unwrap();
    let store = memory_store();
    let limits = Limits {
        time: Duration::from_millis(200),
        memory_mib: 16,
        ..Limits::default()
    };
    let healthy_q = store.queue("healthy").unwrap();
    let mut pools = Vec::new();
    for mode in ["trap", "loop", "grow", "short", "long", "chatty", "garbage"] {
        let q = store.queue(mode).unwrap();
        push(&q, &["a", "b", "c"]).await;
        // The import-abusing plugins need room for their oversized arguments.
        let limits = match mode {
            "chatty" | "garbage" => Limits::default(),
            _ => limits,
        };
        let plugin = testkit(&runtime, store.clone(), mode, limits);
        let pool = serve(&q, plugin, 2);
        pools.push((q, pool));
    }
    let payloads: Vec<String> = (0..500).map(|i| format!("{i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    push(&healthy_q, &refs).await;
    let healthy = testkit(&runtime, store.clone(), "noop", Limits::default());
    let healthy_pool = serve(&healthy_q, healthy, 2);

    assert_eq!(
        settled(&healthy_q).await,
        QueueStats::default(),
        "healthy queue drained"
    );
    assert_eq!(healthy_pool.shutdown().await.done, 500);
    for (q, pool) in pools {
        let s = settled(&q).await;
        let stats = pool.shutdown().await;
        let dead = q.dead_letters(10).await.unwrap();
        if matches!(q.name(), "chatty" | "garbage") {
            // Contained by the host: cut logs, refused imports; work goes on.
            assert_eq!((s.dead, stats.done), (0, 3), "{}: {dead:?}", q.name());
            continue;
        }
        assert_eq!(s.dead, 3, "{}: every task dead-lettered", q.name());
        // Every call fails, so each batch of 3 is bisected down to single
        // tasks: per attempt 2 splits and 3 failed single-task calls.
        assert_eq!(
            (stats.split_batches, stats.failed_batches),
            (4, 6),
            "{}: bisected, one failed call per task per attempt",
            q.name()
        );
        for d in &dead {
            assert_eq!(d.task.attempt, 2);
            assert!(
                d.reason.contains("gave up after 2 attempts"),
                "{}",
                d.reason
            );
        }
        let reason = &dead[0].reason;
        let expect: &[&str] = match q.name() {
            "trap" => &[
                "testkit-trap",
                "trapped",
                "panicked",
                "16 MiB memory, 200ms per call",
            ],
            "loop" => &["testkit-loop", "time limit of 200ms exceeded"],
            "grow" => &["testkit-grow", "16 MiB memory", "memory"],
            _ => &["outcomes for a batch of 1 tasks"],
        };
        for e in expect {
            assert!(reason.contains(e), "{}: {e:?} not in {reason}", q.name());
        }
    }
    runtime.shutdown();
}

/// Runs one task through testkit in script mode with `limits` and one
/// attempt; returns the reason it was dead-lettered with.
async fn dead_reason(command: &str, limits: Limits) -> String {
    let runtime = Runtime::new().unwrap();
    let store = memory_store();
    let q = store.queue("limited").unwrap();
    push(&q, &[command]).await;
    let plugin = testkit(&runtime, store.clone(), "script", limits);
    let pool = serve(&q, plugin, 1);
    assert_eq!(settled(&q).await.dead, 1);
    pool.shutdown().await;
    let dead = q.dead_letters(1).await.unwrap();
    runtime.shutdown();
    dead[0].reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_enforced_per_instance() {
    // The task asks the guest to allocate 8 MiB; the instance may have 4.
    let limits = Limits {
        memory_mib: 4,
        ..Limits::default()
    };
    let reason = dead_reason("alloc:8388608", limits).await;
    assert!(reason.contains("memory"), "{reason}");
}

/// The time limit holds while the guest waits in a host call (a sleep in
/// `wasi:clocks`), where epoch interruption cannot reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_holds_while_the_guest_waits_in_a_host_call() {
    let limits = Limits {
        time: Duration::from_millis(500),
        ..Limits::default()
    };
    let reason = dead_reason("sleep:3600000", limits).await;
    assert!(reason.contains("time limit of 500ms"), "{reason}");
}

/// One task that traps among 99 good ones in a single batch: the failed
/// batch is bisected, so the 99 are done on their first attempt and only the
/// poison task spends its attempts and is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_is_isolated_by_bisection() {
    let runtime = Runtime::new().unwrap();
    let store = memory_store();
    let q = store.queue("poison").unwrap();
    let mut payloads = vec!["ok"; 100];
    payloads[37] = "trap";
    push(&q, &payloads).await;
    let plugin = testkit(&runtime, store.clone(), "script", Limits::default());
    let cfg = PoolConfig {
        batch_size: 100,
        max_workers: 1,
        ..fast_retries(3)
    };
    let pool = WorkerPool::start(q.clone(), Arc::new(plugin), cfg, clock::system()).unwrap();
    assert_eq!(settled(&q).await.dead, 1);
    let stats = pool.shutdown().await;
    println!(
        "100 tasks, 1 poison, max_attempts 3: {} handler calls, {} splits",
        stats.handler_calls, stats.split_batches
    );
    assert_eq!((stats.done, stats.dead), (99, 1));
    // First attempt: one call per level of halving on the poison task's
    // side and one for each half beside it (2 x 7 + 1); then one call for
    // each of its two later attempts.
    assert!(stats.handler_calls <= 17, "{stats:?}");
    let dead = q.dead_letters(1).await.unwrap();
    assert_eq!(dead[0].task.payload, b"trap");
    assert_eq!(dead[0].task.attempt, 3);
    runtime.shutdown();
}

/// `enqueue-many` pushes a batch's follow-ups per target queue, collapses
/// unique keys across the batch, and refuses only the task it cannot take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_answers_each_task_and_refuses_only_bad_ones() {
    let runtime = Runtime::new().unwrap();
    let store = memory_store();
    let q = store.queue("fan").unwrap();
    q.push_batch(
        ["a:k1:x", "b::y", "a:k1:z", "bad\u{1}name::w", "b::v"]
            .iter()
            .map(|p| NewTask::new(*p))
            .collect(),
    )
    .await
    .unwrap();
    let plugin = testkit(&runtime, store.clone(), "bulk", Limits::default());
    let pool = serve(&q, plugin, 5);
    let s = settled(&q).await;
    let stats = pool.shutdown().await;
    assert_eq!(
        (stats.done, s.dead),
        (4, 1),
        "the duplicate key counts as done"
    );
    let dead = q.dead_letters(1).await.unwrap();
    assert!(dead[0].reason.contains("queue name"), "{}", dead[0].reason);
    let payloads = |name: &str| {
        let q = store.queue(name).unwrap();
        async move {
            let got = q.lease(10, Duration::from_secs(5)).await.unwrap();
            got.into_iter().map(|t| t.payload).collect::<Vec<_>>()
        }
    };
    assert_eq!(payloads("a").await, vec![b"x".to_vec()], "k1 collapsed");
    assert_eq!(
        payloads("b").await,
        vec![b"y".to_vec(), b"v".to_vec()],
        "in order"
    );
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_outcomes_become_queue_actions() {
    let runtime = Runtime::new().unwrap();
    let store = memory_store();
    let q = store.queue("script").unwrap();
    push(
        &q,
        &[
            "ok",
            "retry-until:3",
            "retry-after:1",
            "fail:bad input",
            "enqueue:follow:hello",
            "log:hi",
            "nonsense",
        ],
    )
    .await;
    let plugin = testkit(&runtime, store.clone(), "script", Limits::default());
    let pool = serve(&q, plugin, 5);
    let s = settled(&q).await;
    let stats = pool.shutdown().await;
    assert_eq!(s.dead, 2, "fail and the unknown command");
    assert_eq!(stats.done, 5);
    assert_eq!(stats.retried, 3, "retry-until:3 twice, retry-after once");
    let mut reasons: Vec<_> = q
        .dead_letters(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons[0], "bad input");
    assert!(reasons[1].starts_with("unknown command"), "{}", reasons[1]);
    let follow = store.queue("follow").unwrap();
    let got = follow.lease(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"hello");
    runtime.shutdown();
}

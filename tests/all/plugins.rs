//! Real components in the plugin runtime: hostile plugins are contained,
//! script outcomes map to queue actions, host imports work.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use taskhost::backoff::Backoff;
use taskhost::clock;
use taskhost::plugin::{Limits, Plugin, PluginSpec, Runtime};
use taskhost::pool::{PoolConfig, PoolSnapshot, WorkerPool};
use taskhost::queue::{
    BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, QueueStore, Settle,
    Settled, Task,
};

fn testkit(runtime: &Runtime, store: Arc<dyn QueueStore>, mode: &str, limits: Limits) -> Plugin {
    let spec = testkit_spec(mode, limits);
    runtime.load(spec, store).expect("testkit loads")
}

/// The testkit component in `mode`, no grants beyond the defaults.
fn testkit_spec(mode: &str, limits: Limits) -> PluginSpec {
    PluginSpec {
        name: format!("testkit-{mode}"),
        path: support::plugin("testkit"),
        config: [("mode".to_string(), mode.to_string())].into(),
        dir: None,
        limits,
        allowed_hosts: Vec::new(),
        enqueue_to: None,
    }
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

/// The reason of the one task `queue` dead-lettered (there must be one).
async fn only_dead_reason(queue: &Arc<dyn BaseQueue>) -> String {
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    dead[0].reason.clone()
}

/// A runtime, a memory store and its queue `name`.
fn setup(name: &str) -> (Runtime, Arc<dyn QueueStore>, Arc<dyn BaseQueue>) {
    let runtime = Runtime::new().expect("runtime");
    let store = support::memory_store();
    let q = store.queue(name).expect("queue");
    (runtime, store, q)
}

/// Loads `spec`, serves `q` with it until every task is settled, stops the
/// pool: the queue's counts and the pool's.
async fn drain(
    runtime: &Runtime,
    store: &Arc<dyn QueueStore>,
    q: &Arc<dyn BaseQueue>,
    spec: PluginSpec,
    max_attempts: u32,
) -> (QueueStats, PoolSnapshot) {
    let plugin = runtime.load(spec, store.clone()).expect("plugin loads");
    let pool = serve(q, plugin, max_attempts);
    let s = settled(q).await;
    (s, pool.shutdown().await)
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
    let store = support::memory_store();
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
        // Every call fails, so every task fails alone in each attempt: 3
        // failed single-task calls per attempt. How many splits that takes
        // depends on how the retried tasks meet again (one batch of 3: 2
        // splits; apart: fewer).
        assert_eq!(
            stats.failed_batches,
            6,
            "{}: bisected, one failed call per task per attempt",
            q.name()
        );
        assert!(
            (2..=4).contains(&stats.split_batches),
            "{}: {stats:?}",
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
    let (runtime, store, q) = setup("limited");
    push(&q, &[command]).await;
    let plugin = testkit(&runtime, store.clone(), "script", limits);
    let pool = serve(&q, plugin, 1);
    settled(&q).await;
    pool.shutdown().await;
    runtime.shutdown();
    only_dead_reason(&q).await
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
    let (runtime, store, q) = setup("poison");
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
    let (runtime, store, q) = setup("fan");
    q.push_batch(
        ["a:k1:x", "b::y", "a:k1:z", "bad\u{1}name::w", "b::v"]
            .iter()
            .map(|p| NewTask::new(*p))
            .collect(),
    )
    .await
    .unwrap();
    let mut spec = testkit_spec("bulk", Limits::default());
    spec.enqueue_to = Some(vec!["a".into(), "b".into(), "bad\u{1}name".into()]);
    let (_, stats) = drain(&runtime, &store, &q, spec, 5).await;
    assert_eq!(stats.done, 4, "the duplicate key counts as done");
    let reason = only_dead_reason(&q).await;
    assert!(reason.contains("queue name"), "{reason}");
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
    let (runtime, store, q) = setup("script");
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
    let mut spec = testkit_spec("script", Limits::default());
    spec.enqueue_to = Some(vec!["follow".into()]);
    let (s, stats) = drain(&runtime, &store, &q, spec, 5).await;
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

/// Issue 14, item 7: a plugin enqueues only to its own queue and the queues
/// it is granted: by default those its config names as outputs, else its
/// `enqueue_to` list. A refused enqueue names the grant and creates no queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reaches_only_granted_queues() {
    let (runtime, store, q) = setup("own");
    push(
        &q,
        &[
            "enqueue:own:ok",
            "enqueue:named:by-config",
            "enqueue:victim:confused-deputy",
        ],
    )
    .await;
    let mut spec = testkit_spec("script", Limits::default());
    spec.config.insert("output_queue".into(), "named".into());
    let (_, stats) = drain(&runtime, &store, &q, spec, 1).await;
    assert_eq!(
        stats.done, 3,
        "own (and the \"ok\" it enqueued there) and config-named queues granted"
    );
    let reason = only_dead_reason(&q).await;
    assert!(
        reason.contains("\"victim\"") && reason.contains("enqueue_to"),
        "{reason}"
    );
    let known = store.known_queues().await.unwrap();
    assert!(!known.iter().any(|n| n == "victim"), "{known:?}");
    assert_eq!(store.queue("named").unwrap().len().await.unwrap(), 1);

    // An explicit list replaces the config-named default.
    let q = store.queue("listed").unwrap();
    push(&q, &["enqueue:named:x", "enqueue:granted:y"]).await;
    let mut spec = testkit_spec("script", Limits::default());
    spec.config.insert("output_queue".into(), "named".into());
    spec.enqueue_to = Some(vec!["granted".into()]);
    let (s, stats) = drain(&runtime, &store, &q, spec, 1).await;
    assert_eq!((stats.done, s.dead), (1, 1));
    assert_eq!(store.queue("granted").unwrap().len().await.unwrap(), 1);
    runtime.shutdown();
}

/// Issue 14, item 7: enqueues are capped per call and per batch, in tasks
/// and in bytes; a refused call names the cap and enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_caps_per_call_and_per_batch() {
    let runtime = Runtime::new().unwrap();
    let store = support::memory_store();
    // Each case: flood config, limits, the cap its refusal names.
    let cases: [(&str, usize, usize, Limits, &str); 4] = [
        (
            "call-tasks",
            1001,
            1,
            Limits::default(),
            "enqueue_call_tasks",
        ),
        (
            "call-bytes",
            4,
            1 << 20,
            Limits {
                enqueue_call_bytes: 3 << 20,
                ..Limits::default()
            },
            "enqueue_call_bytes",
        ),
        (
            "batch-tasks",
            600,
            1,
            Limits {
                enqueue_batch_tasks: 1000,
                ..Limits::default()
            },
            "enqueue_batch_tasks",
        ),
        (
            "batch-bytes",
            2,
            1 << 20,
            Limits {
                enqueue_batch_bytes: 3 << 20,
                ..Limits::default()
            },
            "enqueue_batch_bytes",
        ),
    ];
    for (name, tasks, bytes, limits, cap) in cases {
        let q = store.queue(name).unwrap();
        let out = format!("{name}-out");
        // Two tasks in one batch: two enqueue-many calls in one batch.
        push(&q, &["a", "b"]).await;
        let mut spec = testkit_spec("flood", limits);
        spec.config.extend([
            ("flood_tasks".to_string(), tasks.to_string()),
            ("flood_bytes".to_string(), bytes.to_string()),
            ("results".to_string(), out.clone()),
        ]);
        let plugin = runtime.load(spec, store.clone()).unwrap();
        let pool = WorkerPool::start(
            q.clone(),
            Arc::new(plugin),
            PoolConfig {
                batch_size: 2,
                max_latency: Duration::from_millis(50),
                ..fast_retries(1)
            },
            clock::system(),
        )
        .unwrap();
        let s = settled(&q).await;
        pool.shutdown().await;
        let dead = q.dead_letters(2).await.unwrap();
        let batch_cap = cap.starts_with("enqueue_batch");
        assert_eq!(s.dead, if batch_cap { 1 } else { 2 }, "{name}: {dead:?}");
        assert!(
            dead.iter().all(|d| d.reason.contains(cap)),
            "{name}: {dead:?}"
        );
        // Nothing of a refused call was enqueued; the first call of a
        // batch under its batch cap went through whole.
        let pushed = store.queue(&out).unwrap().len().await.unwrap();
        let expect = if batch_cap { tasks as u64 } else { 0 };
        assert_eq!(pushed, expect, "{name}");
    }
    runtime.shutdown();
}

/// A queue store that records the size of every push, to see chunking.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn QueueStore>,
    pushes: Arc<std::sync::Mutex<Vec<usize>>>,
}

#[derive(Debug)]
struct RecordingQueue {
    inner: Arc<dyn BaseQueue>,
    pushes: Arc<std::sync::Mutex<Vec<usize>>>,
}

#[async_trait::async_trait]
impl QueueStore for Recording {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        Ok(Arc::new(RecordingQueue {
            inner: self.inner.queue(name)?,
            pushes: self.pushes.clone(),
        }))
    }
    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        self.inner.known_queues().await
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

#[async_trait::async_trait]
impl BaseQueue for RecordingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        self.pushes.lock().unwrap().push(tasks.len());
        self.inner.push_batch(tasks).await
    }
    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        self.inner.lease(max, ttl).await
    }
    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        self.inner.renew(leases, ttl).await
    }
    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        self.inner.settle(settlements).await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        self.inner.dead_letters(limit).await
    }
}

/// Issue 14, item 7: one `enqueue-many` is pushed in chunks, so no single
/// queue round trip (a Redis script) grows with the plugin's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_is_pushed_in_chunks() {
    let runtime = Runtime::new().unwrap();
    let pushes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store: Arc<dyn QueueStore> = Arc::new(Recording {
        inner: support::memory_store(),
        pushes: pushes.clone(),
    });
    let q = store.queue("flood").unwrap();
    push(&q, &["go"]).await;
    pushes.lock().unwrap().clear();
    let mut spec = testkit_spec("flood", Limits::default());
    spec.config.extend([
        ("flood_tasks".to_string(), "1000".to_string()),
        ("results".to_string(), "out".to_string()),
    ]);
    let (_, stats) = drain(&runtime, &store, &q, spec, 1).await;
    assert_eq!(stats.done, 1);
    let sizes = pushes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 1000, "{sizes:?}");
    assert!(sizes.len() >= 4, "one call, several pushes: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 256), "{sizes:?}");
    assert_eq!(store.queue("out").unwrap().len().await.unwrap(), 1000);
    runtime.shutdown();
}

/// Issue 14, item 13: a plugin's log text cannot forge a line of the host's
/// log: line breaks and other control characters come out escaped.
#[test]
fn plugin_log_text_cannot_forge_host_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let forged = "2026-01-01T00:00:00.000000Z ERROR taskhost: FORGED shutting down";
    support::ok(
        support::host()
            .args(["push", "logs", &format!("log:hello\n{forged}\r\x1b[2Kmore")])
            .arg("--data-dir")
            .arg(&data),
    );
    let out = support::output(
        support::host()
            .env("TASKHOST_LOG", "info")
            .args(["run", "--plugin"])
            .arg(support::plugin("testkit"))
            .args(["--queue", "logs", "--set", "mode=script"])
            .args(["--exit-when-drained", "--no-watch", "--no-cache"])
            .arg("--data-dir")
            .arg(&data),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("FORGED"))
        .unwrap_or_else(|| panic!("the plugin's line is logged: {stderr}"));
    assert!(
        line.contains("hello\\n2026") && line.contains("\\r\\u{1b}[2Kmore"),
        "one escaped line: {line}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b[2K"),
        "{stderr:?}"
    );
}

/// WIT's `task` record as a component-model type.
const TASK_RECORD: &str = r#"(record
  (field "id" u64)
  (field "queue" string)
  (field "unique-key" (option string))
  (field "payload" (list u8))
  (field "attempt" u32)
  (field "enqueued-at-ms" u64))"#;

/// A handler-world component of two core modules, each with its own linear
/// memory: every batch grows both by `GROW` 64 KiB pages, then answers
/// `done` for each task. A memory limit per linear memory lets it use twice
/// `memory_mib`. (Hand-written: no toolchain here builds such a component.)
/// `TASK_RECORD` stands for [`TASK_RECORD`], which the outer component and
/// the interface component it exports through must each define.
const TWO_MEMORIES: &str = r#"
(component
  (core module $b
    (memory 1)
    (func (export "grow") (param i32) (result i32)
      (memory.grow (local.get 0))))
  (core module $a
    (import "b" "grow" (func $b-grow (param i32) (result i32)))
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 32768))
    ;; Bump allocator for the host's copy of the batch (never frees).
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
      (local $i i32)
      (if (i32.lt_s (memory.grow (i32.const GROW)) (i32.const 0)) (then unreachable))
      (if (i32.lt_s (call $b-grow (i32.const GROW)) (i32.const 0)) (then unreachable))
      ;; One `done` (variant case 0, 24 bytes each) per task, at 64.
      (block $end
        (loop $next
          (br_if $end (i32.ge_u (local.get $i) (local.get $len)))
          (i32.store8
            (i32.add (i32.const 64) (i32.mul (local.get $i) (i32.const 24)))
            (i32.const 0))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $next)))
      (i32.store (i32.const 16) (i32.const 64))
      (i32.store (i32.const 20) (local.get $len))
      (i32.const 16)))
  (core instance $b-inst (instantiate $b))
  (core instance $a-inst (instantiate $a (with "b" (instance $b-inst))))
  (type $task TASK_RECORD)
  (type $outcome (variant (case "done") (case "retry" (option u64)) (case "fail" string)))
  (alias core export $a-inst "memory" (core memory $mem))
  (alias core export $a-inst "realloc" (core func $realloc))
  (alias core export $a-inst "handle" (core func $handle-core))
  (func $handle (param "batch" (list $task)) (result (list $outcome))
    (canon lift (core func $handle-core) (memory $mem) (realloc $realloc)))
  ;; Exported functions may only use exported (named) types: export the
  ;; interface through a component that names them.
  (component $iface
    (type $task-def TASK_RECORD)
    (import "import-type-task" (type $task (eq $task-def)))
    (type $outcome-def (variant (case "done") (case "retry" (option u64)) (case "fail" string)))
    (import "import-type-outcome" (type $outcome (eq $outcome-def)))
    (import "import-func-handle" (func $f (param "batch" (list $task)) (result (list $outcome))))
    (export $task-out "task" (type $task))
    (export $outcome-out "outcome" (type $outcome))
    (export "handle" (func $f) (func (param "batch" (list $task-out)) (result (list $outcome-out)))))
  (instance $handler (instantiate $iface
    (with "import-func-handle" (func $handle))
    (with "import-type-task" (type $task))
    (with "import-type-outcome" (type $outcome))))
  (export "taskhost:plugin/handler@0.1.0" (instance $handler)))
"#;

/// Issue 14, item 9: the memory limit holds for all linear memories of an
/// instance together: a component whose two memories grow to 10 MiB each
/// traps under `memory_mib = 16` and runs under 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_holds_for_all_memories_of_an_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-memories.wasm");
    // 160 pages: 10 MiB per memory, 20 MiB together.
    let wasm = wat::parse_str(
        TWO_MEMORIES
            .replace("GROW", "160")
            .replace("TASK_RECORD", TASK_RECORD),
    )
    .unwrap();
    std::fs::write(&path, wasm).unwrap();
    let runtime = Runtime::new().unwrap();
    let store = support::memory_store();
    for (mib, dead) in [(16, 1), (32, 0)] {
        let q = store.queue(&format!("mib-{mib}")).unwrap();
        push(&q, &["x"]).await;
        let spec = PluginSpec {
            name: format!("two-memories-{mib}"),
            path: path.clone(),
            config: Default::default(),
            dir: None,
            limits: Limits {
                memory_mib: mib,
                ..Limits::default()
            },
            allowed_hosts: Vec::new(),
            enqueue_to: None,
        };
        let (s, stats) = drain(&runtime, &store, &q, spec, 1).await;
        let letters = q.dead_letters(1).await.unwrap();
        assert_eq!(
            (s.dead, stats.done),
            (dead, 1 - dead),
            "{mib} MiB: {letters:?}"
        );
        if let Some(d) = letters.first() {
            assert!(
                d.reason.contains("memory limit of 16 MiB exceeded"),
                "{}",
                d.reason
            );
        }
    }
    runtime.shutdown();
}

/// Issue 14, item 8: a compiled-code cache entry moved under another
/// component's name is refused (and that component recompiled), so the host
/// never reports one plugin while running another's native code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_cache_entries_are_not_loaded() {
    use taskhost::plugin::cache::Source;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spec = |name: &str| PluginSpec {
        name: name.into(),
        path: support::plugin(name),
        ..testkit_spec("noop", Limits::default())
    };
    let runtime = support::cached_runtime(&cache).unwrap();
    let testkit = runtime
        .load(spec("testkit"), support::memory_store())
        .unwrap();
    let archive = runtime
        .load(spec("archive"), support::memory_store())
        .unwrap();
    let (victim, donor) = (testkit.sha256().to_owned(), archive.sha256().to_owned());
    runtime.shutdown();
    // Every file of archive's entry, copied over testkit's namesake.
    let mut swapped = 0;
    for e in std::fs::read_dir(&cache).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(&donor) {
            std::fs::copy(cache.join(&name), cache.join(format!("{victim}{rest}"))).unwrap();
            swapped += 1;
        }
    }
    assert!(swapped >= 2, "entry and its check");
    let runtime = support::cached_runtime(&cache).unwrap();
    let again = runtime
        .load(spec("testkit"), support::memory_store())
        .unwrap();
    assert_eq!(
        again.source(),
        Source::Compiled,
        "the swapped entry is refused"
    );
    let third = runtime
        .load(spec("testkit"), support::memory_store())
        .unwrap();
    assert_eq!(third.source(), Source::Cached, "and rebuilt");
    runtime.shutdown();
}

/// Issue 14, item 8: a cache directory others may write to is refused, and
/// a new one is made private, with its key outside it.
#[test]
fn cache_dir_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    support::cached_runtime(&cache).unwrap().shutdown();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&dir.path().join("cache.key")), 0o600);
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = support::cached_runtime(&cache).unwrap_err().to_string();
    assert!(
        e.contains(&cache.display().to_string()) && e.contains("777"),
        "{e}"
    );
}

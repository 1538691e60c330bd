//! Hot swap under load, reload refusals, and the compiled-code cache, with
//! real components.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use taskhost::clock;
use taskhost::plugin::cache::Source;
use taskhost::plugin::swap::{HotSwap, PluginSlot};
use taskhost::plugin::{Limits, PluginSpec, Runtime};
use taskhost::pool::{PoolConfig, WorkerPool};
use taskhost::queue::{NewTask, QueueStore};
use tokio_util::sync::CancellationToken;

const TAG_A: &[u8] = b"TAG:AAAA0000";
const TAG_B: &[u8] = b"TAG:BBBB0000";

/// The testkit component, and a second version of it that differs only in
/// the tag compiled into its data segment.
fn two_versions() -> (Vec<u8>, Vec<u8>) {
    let a = std::fs::read(support::plugin("testkit")).unwrap();
    let at: Vec<usize> = a
        .windows(TAG_A.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG_A)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the tag appears once in the component");
    let mut b = a.clone();
    b[at[0]..at[0] + TAG_B.len()].copy_from_slice(TAG_B);
    (a, b)
}

/// Replaces a file the way a deploy does: write beside it, rename over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spec(path: PathBuf, mode: &str) -> PluginSpec {
    PluginSpec {
        name: "tagger".into(),
        path,
        config: [
            ("mode".to_string(), mode.to_string()),
            ("results".into(), "results".into()),
        ]
        .into(),
        dir: None,
        limits: Limits::default(),
        allowed_hosts: Vec::new(),
        enqueue_to: None,
    }
}

pub(crate) fn version_of(bytes: &[u8]) -> String {
    taskhost::plugin::cache::sha256_hex(bytes)[..12].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_load_lose_and_fail_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_versions();
    let (va, vb) = (version_of(&a), version_of(&b));
    let path = tmp.path().join("tagger.wasm");
    std::fs::write(&path, &a).unwrap();

    let runtime = Runtime::new().unwrap();
    let store: Arc<dyn QueueStore> = support::memory_store();
    let plugin = runtime
        .load(spec(path.clone(), "tag"), store.clone())
        .unwrap();
    let slot = PluginSlot::new(runtime.clone(), plugin, store.clone());
    let stop = CancellationToken::new();
    let watcher = slot.clone().watch(Duration::from_millis(5), stop.clone());
    let mut live = slot.subscribe();

    let work = store.queue("work").unwrap();
    let cfg = PoolConfig {
        batch_size: 10,
        max_workers: 2,
        max_latency: Duration::from_millis(1),
        ..PoolConfig::default()
    };
    let pool = WorkerPool::start(work.clone(), slot.clone(), cfg, clock::system()).unwrap();

    let mut pushed = 0usize;
    for swap in 0..20 {
        // Steady load: a round of tasks before and while each swap happens.
        let tasks = (0..100)
            .map(|j| NewTask::new(format!("t-{swap}-{j}")))
            .collect();
        work.push_batch(tasks).await.unwrap();
        pushed += 100;
        let (bytes, want) = if swap % 2 == 0 { (&b, &vb) } else { (&a, &va) };
        replace(&path, bytes);
        live.wait_for(|v| v == want).await.unwrap();
    }
    let results = store.queue("results").unwrap();
    while results.stats().await.unwrap().pending < pushed as u64
        || !work.stats().await.unwrap().is_empty()
    {
        results.wait_for_work(Duration::from_millis(10)).await;
    }
    let stats = pool.shutdown().await;
    stop.cancel();
    watcher.await.unwrap();

    assert_eq!(stats.failed_batches, 0, "no batch failed across 20 swaps");
    assert_eq!(stats.dead, 0);
    assert_eq!(stats.done as usize, pushed);
    let got = results
        .lease(pushed + 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), pushed, "one result per task");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut by_tag: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let text = String::from_utf8(r.payload.clone()).unwrap();
        let mut parts = text.split('|');
        let (task, tag, version) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        *seen.entry(task.to_owned()).or_default() += 1;
        *by_tag.entry(tag.to_owned()).or_default() += 1;
        // The code that ran (its tag) is the version the host says it ran:
        // no batch mixed versions.
        let expected = if tag.as_bytes() == TAG_A { &va } else { &vb };
        assert_eq!(version, expected, "{text}");
    }
    assert_eq!(seen.len(), pushed);
    assert!(
        seen.values().all(|&n| n == 1),
        "every task handled exactly once"
    );
    assert_eq!(by_tag.len(), 2, "both versions handled tasks: {by_tag:?}");
    let per_version = slot.batches_by_version();
    assert!(
        per_version.contains_key(&va) && per_version.contains_key(&vb),
        "{per_version:?}"
    );
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_or_wrong_files_never_replace_a_working_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_versions();
    let path = tmp.path().join("tagger.wasm");
    std::fs::write(&path, &a).unwrap();
    let runtime = Runtime::new().unwrap();
    let store: Arc<dyn QueueStore> = support::memory_store();
    let slot = PluginSlot::new(
        runtime.clone(),
        runtime
            .load(spec(path.clone(), "noop"), store.clone())
            .unwrap(),
        store,
    );
    let stop = CancellationToken::new();
    let watcher = slot.clone().watch(Duration::from_millis(5), stop.clone());
    let mut attempts = slot.reload_attempts();

    // A copy that stopped half way: validated, refused, the old one serves.
    std::fs::write(&path, &b[..b.len() / 2]).unwrap();
    attempts.wait_for(|&n| n >= 1).await.unwrap();
    assert_eq!(slot.version(), version_of(&a));
    let err = slot.last_error().unwrap();
    assert!(
        err.contains("tagger.wasm") && err.contains("failed to compile"),
        "{err}"
    );

    // A valid component of another world: refused too.
    replace(
        &path,
        &std::fs::read(support::plugin("wrong-world")).unwrap(),
    );
    attempts.wait_for(|&n| n >= 2).await.unwrap();
    assert_eq!(slot.version(), version_of(&a));
    assert!(
        slot.last_error()
            .unwrap()
            .contains("does not implement world")
    );

    // The finished copy is taken.
    replace(&path, &b);
    slot.subscribe()
        .wait_for(|v| *v == version_of(&b))
        .await
        .unwrap();
    // The outcome is recorded just after the swap is published.
    attempts.wait_for(|&n| n >= 3).await.unwrap();
    assert!(slot.last_error().is_none());
    stop.cancel();
    watcher.await.unwrap();
    runtime.shutdown();
}

#[test]
fn compiled_code_is_cached_and_a_corrupt_entry_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = support::memory_store();
    let path = support::plugin("testkit");
    // The first load compiles; a restart (a new engine with the same
    // settings) takes the cached code.
    for want in [Source::Compiled, Source::Cached] {
        let runtime = support::cached_runtime(&cache).unwrap();
        let p = runtime
            .load(spec(path.clone(), "noop"), store.clone())
            .unwrap();
        assert_eq!(p.source(), want);
        runtime.shutdown();
    }

    // Flip a byte in the entry: it is not trusted, but rebuilt.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let third = support::cached_runtime(&cache).unwrap();
    let p = third
        .load(spec(path.clone(), "noop"), store.clone())
        .unwrap();
    assert_eq!(p.source(), Source::Compiled, "corrupt entry rebuilt");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let q = store.queue("cache").unwrap();
    rt.block_on(async {
        q.push(NewTask::new("x")).await.unwrap();
        let batch = q.lease(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            p.call(&batch).await.unwrap().len(),
            1,
            "the rebuilt plugin runs"
        );
    });
    third.shutdown();
    let fourth = support::cached_runtime(&cache).unwrap();
    assert_eq!(
        fourth.load(spec(path, "noop"), store).unwrap().source(),
        Source::Cached
    );
}

/// `host reload` reaches a running host, which swaps and shows the new version.
#[test]
fn host_reload_command_swaps_a_running_host() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (a, b) = two_versions();
    let path = tmp.path().join("tk.wasm");
    std::fs::write(&path, &a).unwrap();
    let mut child = support::host()
        .arg("run")
        .arg("--plugin")
        .arg(&path)
        .arg("--data-dir")
        .arg(&data)
        .args(["--set", "mode=noop", "--no-watch"])
        .spawn()
        .unwrap();
    let version_in_status = || {
        let out = support::output(support::host().args(["status", "--data-dir"]).arg(&data));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    support::wait_until("the host to start", Duration::from_secs(120), || {
        version_in_status().contains(&format!("version {}", version_of(&a)))
    });
    std::fs::write(&path, &b).unwrap();
    let out = support::ok(support::host().args(["reload", "--data-dir"]).arg(&data));
    assert!(out.contains("asked 1 host"), "{out}");
    support::wait_until("the new version", Duration::from_secs(60), || {
        version_in_status().contains(&format!("version {}", version_of(&b)))
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The same component with a custom section appended: another version
/// (another hash) that behaves the same.
pub(crate) fn with_custom_section(bytes: &[u8], note: &str) -> Vec<u8> {
    let name = b"taskhost-test";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(note.as_bytes());
    assert!(section.len() < 128, "one-byte LEB128 size");
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

/// A source plugin named in config is swapped like a handler: polls go on
/// through the swap, each on one version, and a broken file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_plugin_is_swapped_while_it_polls_and_loses_nothing() {
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::atomic::Ordering;
    use taskhost::plugin::SourcePlugin;
    use taskhost::plugin::swap::{Reloaded, SourceSlot};
    use taskhost::source::{Poller, SourceConfig};
    use taskhost_fixtures::http::CountingServer;

    // Each poll gets the next number as its one task.
    let server = CountingServer::start_numbered(|n| {
        http::Response::new(Full::new(Bytes::from(format!("[\"{n}\"]"))))
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = std::fs::read(support::plugin("http-source")).unwrap();
    let b = with_custom_section(&a, "version b");
    let path = tmp.path().join("source.wasm");
    std::fs::write(&path, &a).unwrap();
    let spec = PluginSpec {
        name: "feed".into(),
        path: path.clone(),
        config: [("url".to_string(), format!("{}/tasks", server.url()))].into(),
        dir: None,
        limits: Limits::default(),
        allowed_hosts: vec![server.addr().to_string()],
        enqueue_to: None,
    };
    let runtime = Runtime::new().unwrap();
    let store: Arc<dyn QueueStore> = support::memory_store();
    let queue = store.queue("jobs").unwrap();
    let source = SourcePlugin::load_async(&runtime, spec, "jobs", store.clone())
        .await
        .unwrap();
    let slot = SourceSlot::new_source(runtime.clone(), source, store.clone());
    assert_eq!(slot.version(), version_of(&a));
    let cfg = SourceConfig {
        capacity: 1_000_000,
        ..SourceConfig::default()
    };
    let poller = Poller::start(slot.clone(), queue.clone(), cfg).unwrap();
    let pending_at_least = |n: u64| {
        let queue = queue.clone();
        async move {
            while queue.stats().await.unwrap().pending < n {
                queue.wait_for_work(Duration::from_millis(20)).await;
            }
        }
    };
    pending_at_least(20).await;

    // An explicit reload (what SIGHUP and `host reload` do).
    replace(&path, &b);
    assert_eq!(
        slot.reload().await.unwrap(),
        Reloaded::Swapped {
            from: version_of(&a),
            to: version_of(&b)
        }
    );
    let after_swap = queue.stats().await.unwrap().pending;
    pending_at_least(after_swap + 20).await;

    // A half-written file is refused; version b keeps polling.
    std::fs::write(&path, &a[..a.len() / 2]).unwrap();
    let err = slot.reload().await.unwrap_err().to_string();
    assert!(err.contains("source.wasm"), "{err}");
    assert_eq!(slot.version(), version_of(&b));
    let after_refusal = queue.stats().await.unwrap().pending;
    pending_at_least(after_refusal + 20).await;

    // The file watcher swaps back to version a.
    let stop = CancellationToken::new();
    let watcher = slot.clone().watch(Duration::from_millis(5), stop.clone());
    replace(&path, &a);
    slot.subscribe()
        .wait_for(|v| *v == version_of(&a))
        .await
        .unwrap();
    let after_watch = queue.stats().await.unwrap().pending;
    pending_at_least(after_watch + 20).await;
    stop.cancel();
    watcher.await.unwrap();
    poller.shutdown().await;

    // Every poll was made by one version, both versions polled, and every
    // task served before the last poll is in the queue exactly once.
    let polls = slot.batches_by_version();
    assert!(
        polls.len() == 2 && polls.values().all(|&n| n >= 20),
        "{polls:?}"
    );
    let served = server.stats().requests.load(Ordering::SeqCst);
    let tasks = queue
        .lease(1_000_000, Duration::from_secs(60))
        .await
        .unwrap();
    let mut got: Vec<u64> = tasks
        .iter()
        .map(|t| std::str::from_utf8(&t.payload).unwrap().parse().unwrap())
        .collect();
    got.sort_unstable();
    let n = got.len() as u64;
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "no gap, no duplicate");
    assert!(n + 1 >= served, "served {served}, enqueued {n}");
    server.shutdown().await;
    runtime.shutdown();
}

//! The metrics of issue 16's second part, from real `host run --listen`
//! processes: batch results by cause, batch durations and task waits, source
//! polls, outbound HTTP per destination, plugin swaps; and the plugin
//! history `GET /v1/plugins` serves for the dashboard's plugins page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use taskhost_fixtures::http::CountingServer;

use crate::api::{Listening, entry, get_json, http, metric, metrics, noop_host};
use crate::support::{self, HostToml, quoted};

const LIMIT: Duration = Duration::from_secs(120);

/// A metric's labels as name/value pairs.
type Labels<'a> = Vec<(&'a str, &'a str)>;

fn answer(status: u16, body: &'static [u8]) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

/// A source feeds eight script commands, one per batch, to a testkit
/// handler: five end `done` (two of them GET over HTTP, one after a 503 the
/// host retries), one traps, one loops past its time limit, one grows past
/// its memory limit. The second poll fails, later ones find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_batch_results_durations_waits_polls_and_http() {
    let fetches = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let server_addr = Arc::new(std::sync::OnceLock::<String>::new());
    let (f, b, a) = (fetches.clone(), busy.clone(), server_addr.clone());
    let server = CountingServer::start(Arc::new(move |parts, _| match parts.uri.path() {
        "/fetch" => match f.fetch_add(1, Ordering::Relaxed) {
            0 => {
                let addr = a.get().unwrap();
                let body = serde_json::json!([
                    "ok",
                    "ok",
                    "ok",
                    format!("get:http://{addr}/get"),
                    format!("get:http://{addr}/busy"),
                    "trap",
                    "loop",
                    "alloc:67108864",
                ])
                .to_string();
                http::Response::new(Full::new(Bytes::from(body)))
            }
            1 => answer(500, b"down for a moment"),
            _ => answer(204, b""),
        },
        "/busy" if b.fetch_add(1, Ordering::Relaxed) == 0 => {
            let mut r = answer(503, b"busy");
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("0"));
            r
        }
        _ => answer(200, b"hello"),
    }))
    .await
    .unwrap();
    let addr = server.addr().to_string();
    server_addr.set(addr.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let allowed = format!("[{}]", quoted(&addr));
    let config = HostToml::new(&tmp.path().join("data"))
        .backend("memory")
        .raw("api", r#"{ listen = "127.0.0.1:0" }"#)
        .plugin(&support::plugin("testkit"))
        .string("queue", "jobs")
        .raw("config", r#"{ mode = "script" }"#)
        .raw("limits", r#"{ memory_mib = 16, time = "1s" }"#)
        .raw("allowed_hosts", &allowed)
        .raw(
            "pool",
            r#"{ batch_size = 1, max_latency = "5ms", max_attempts = 1 }"#,
        )
        .source(&support::plugin("http-source"))
        .string("queue", "jobs")
        .raw(
            "config",
            &format!("{{ url = {} }}", quoted(format!("{}/fetch", server.url()))),
        )
        .raw("allowed_hosts", &allowed)
        .raw(
            "poll",
            r#"{ poll_interval = "20ms", poll_interval_max = "100ms", capacity = 100 }"#,
        )
        .write(tmp.path().join("host.toml"));
    let host = tokio::task::spawn_blocking(move || {
        Listening::start(support::host().arg("run").arg("--config").arg(&config))
    })
    .await
    .unwrap();
    let a = host.addr.clone();
    let m = tokio::task::spawn_blocking(move || {
        let mut last = None;
        // A worker counts its batch settled, then goes idle: wait for both.
        support::wait_until(
            "eight tasks settled, an empty poll, no worker busy",
            LIMIT,
            || {
                let m = metrics(&a);
                let n = |outcome| {
                    metric(
                        &m,
                        "taskhost_tasks_settled",
                        &[("queue", "jobs"), ("outcome", outcome)],
                    )
                    .unwrap_or(0.0)
                };
                let settled = n("done") + n("dead") == 8.0;
                let empty = metric(
                    &m,
                    "taskhost_source_polls",
                    &[("source", "http_source"), ("result", "empty")],
                )
                .unwrap_or(0.0)
                    >= 1.0;
                let idle = metric(&m, "taskhost_workers_busy", &[("queue", "jobs")]) == Some(0.0);
                last = Some(m);
                settled && empty && idle
            },
        );
        last.unwrap()
    })
    .await
    .unwrap();
    let jobs = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("queue", "jobs")];
        l.extend_from_slice(extra);
        l
    };
    let want: Vec<(&str, Labels, f64)> = vec![
        ("taskhost_tasks_settled", jobs(&[("outcome", "done")]), 5.0),
        ("taskhost_tasks_settled", jobs(&[("outcome", "dead")]), 3.0),
        (
            "taskhost_tasks_settled",
            jobs(&[("outcome", "released")]),
            0.0,
        ),
        ("taskhost_batches", jobs(&[("result", "ok")]), 5.0),
        ("taskhost_batches", jobs(&[("result", "trap")]), 1.0),
        ("taskhost_batches", jobs(&[("result", "time_limit")]), 1.0),
        ("taskhost_batches", jobs(&[("result", "memory_limit")]), 1.0),
        ("taskhost_batches", jobs(&[("result", "error")]), 0.0),
        (
            "taskhost_batch_duration_seconds_count",
            jobs(&[("plugin", "testkit")]),
            8.0,
        ),
        ("taskhost_task_wait_seconds_count", jobs(&[]), 8.0),
        (
            "taskhost_source_polls",
            vec![("source", "http_source"), ("result", "tasks")],
            1.0,
        ),
        (
            "taskhost_source_polls",
            vec![("source", "http_source"), ("result", "error")],
            1.0,
        ),
        // The first fetch, the GET and the busy GET once retried.
        (
            "taskhost_http_requests",
            vec![("host", &addr), ("status", "200")],
            3.0,
        ),
        (
            "taskhost_http_requests",
            vec![("host", &addr), ("status", "500")],
            1.0,
        ),
        ("taskhost_http_retries", vec![("host", &addr)], 1.0),
        // Drained: no worker runs a batch (idle workers are not busy).
        ("taskhost_workers_busy", jobs(&[]), 0.0),
    ];
    for (name, labels, value) in want {
        assert_eq!(metric(&m, name, &labels), Some(value), "{name} {labels:?}");
    }
    // The time-limited call took at least its limit.
    let sum = metric(
        &m,
        "taskhost_batch_duration_seconds_sum",
        &jobs(&[("plugin", "testkit")]),
    )
    .unwrap();
    assert!(sum >= 1.0, "{sum}");
    let empties = metric(
        &m,
        "taskhost_http_requests",
        &[("host", &addr), ("status", "204")],
    );
    assert!(empties.is_some_and(|n| n >= 1.0), "{empties:?}");
    // Every family exported is documented in the README, by its wire name.
    let (_, text) = http(&host.addr, "GET", "/metrics", &[], b"");
    let readme = std::fs::read_to_string(support::root().join("README.md")).unwrap();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let wire = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        assert!(
            readme.contains(&format!("`{wire}{{")) || readme.contains(&format!("`{wire}`")),
            "{wire} is not documented in the README"
        );
    }
    // The plugins page: one version, its calls by result and quantiles.
    let v = get_json(&host.addr, "/v1/plugins");
    let handler = entry(&v, "plugins", "kind", "handler").expect("a handler plugin");
    let version = &handler["versions"][0];
    assert_eq!(
        (&version["batches"], &version["ok"], &version["failed"]),
        (&8.into(), &5.into(), &3.into()),
        "{handler}"
    );
    assert_eq!(version["results"]["memory_limit"], 1, "{handler}");
    let p99 = version["p99_seconds"].as_f64().unwrap();
    assert!(p99 >= 0.5, "the p99 holds the time-limited call: {handler}");
    assert!(
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "source" && p["name"] == "http_source")
    );
    tokio::task::spawn_blocking(move || host.stop())
        .await
        .unwrap();
    server.shutdown().await;
}

/// The testkit component with its compiled-in tag changed: a second version.
fn second_version(a: &[u8]) -> Vec<u8> {
    let (from, to) = (b"TAG:AAAA0000", b"TAG:BBBB0000");
    let at = a
        .windows(from.len())
        .position(|w| w == from)
        .expect("the testkit carries its tag");
    let mut b = a.to_vec();
    b[at..at + to.len()].copy_from_slice(to);
    b
}

/// Replaces a file the way a deploy does: write beside it, rename over it.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Pushes `n` tasks and waits until `done` tasks are settled done in all.
fn push_and_drain(addr: &str, n: usize, done: f64) {
    let body: String = (0..n)
        .map(|i| format!("{{\"payload\":\"t{i}\"}}\n"))
        .collect();
    let (status, answer) = http(
        addr,
        "POST",
        "/v1/queues/default/tasks",
        &[],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    support::wait_until("the tasks done", LIMIT, || {
        let m = metrics(addr);
        let got = metric(&m, "taskhost_tasks_settled", &[("outcome", "done")]);
        got == Some(done)
    });
}

/// A swap counts as `swapped`, a broken file as `refused`; the plugins page
/// lists loaded, swapped and refused (with the reason) with their times,
/// and batches and quantiles per version.
#[test]
fn plugin_swaps_count_and_show_in_the_plugin_history() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("testkit.wasm");
    let a = std::fs::read(support::plugin("testkit")).unwrap();
    std::fs::write(&file, &a).unwrap();
    let host = Listening::start(
        noop_host(&file)
            .arg("--data-dir")
            .arg(tmp.path().join("data")),
    );
    let addr = host.addr.clone();
    push_and_drain(&addr, 20, 20.0);
    replace(&file, &second_version(&a));
    host.wait_for_log("plugin swapped");
    push_and_drain(&addr, 20, 40.0);
    replace(&file, b"not a component at all");
    host.wait_for_log("reload refused");

    let m = metrics(&addr);
    for (result, want) in [("swapped", 1.0), ("refused", 1.0)] {
        assert_eq!(
            metric(
                &m,
                "taskhost_plugin_swaps",
                &[("plugin", "testkit"), ("result", result)]
            ),
            Some(want),
            "{result}"
        );
    }
    let v = get_json(&addr, "/v1/plugins");
    let p = &v["plugins"][0];
    let history = p["history"].as_array().unwrap();
    let kinds: Vec<_> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["loaded", "swapped", "refused"], "{p}");
    let (first, second) = (&history[0]["version"], &history[1]["version"]);
    assert_ne!(first, second);
    assert_eq!(&history[1]["from"], first, "{p}");
    assert_eq!(
        &history[2]["version"], second,
        "the swapped-in version kept serving"
    );
    assert!(
        history[2]["reason"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly component"),
        "{p}"
    );
    assert!(
        history
            .windows(2)
            .all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()),
        "{p}"
    );
    let versions = p["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{p}");
    for ver in versions {
        assert!(ver["ok"].as_u64().unwrap() >= 1, "{ver}");
        assert_eq!(ver["failed"], 0, "{ver}");
        assert_eq!(ver["ok"], ver["batches"], "{ver}");
        assert!(ver["p50_seconds"].as_f64().unwrap() <= ver["p99_seconds"].as_f64().unwrap());
        // The same calls, per version, in the metrics.
        let version = ver["version"].as_str().unwrap();
        assert_eq!(
            metric(
                &m,
                "taskhost_batches",
                &[("version", version), ("result", "ok")]
            ),
            ver["ok"].as_f64(),
            "{ver}"
        );
    }
    host.stop();
}

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

use crate::api::{Listening, http, json, metric, metrics};
use crate::support::{self, HostToml, quoted};

const LIMIT: Duration = Duration::from_secs(120);

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
        support::wait_until("eight tasks settled and an empty poll", LIMIT, || {
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
            last = Some(m);
            settled && empty
        });
        last.unwrap()
    })
    .await
    .unwrap();
    let jobs = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("queue", "jobs")];
        l.extend_from_slice(extra);
        l
    };
    let want: Vec<(&str, Vec<(&str, &str)>, f64)> = vec![
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
    // The plugins page: one version, its calls by result and quantiles.
    let (status, body) = http(&host.addr, "GET", "/v1/plugins", &[], b"");
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let handler = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "handler")
        .unwrap()
        .clone();
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

//! Containment, black box: a real `host run` against servers that never
//! finish an answer or ask for a wait past the end of time.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use taskhost_fixtures::http::{CountingServer, too_many_requests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, HostToml, quoted};

/// A host config serving queue `q` with testkit in script mode.
fn script_host(
    dir: &std::path::Path,
    allowed: &str,
    limits: &str,
    pool: &str,
) -> std::path::PathBuf {
    HostToml::new(&dir.join("data"))
        .plugin(&support::plugin("testkit"))
        .string("queue", "q")
        .raw("config", r#"{ mode = "script" }"#)
        .raw("limits", limits)
        .raw("pool", pool)
        .raw("allowed_hosts", &format!("[{}]", quoted(allowed)))
        .write(dir.join("host.toml"))
}

/// Runs `host run --exit-when-drained`, killing it after `limit`; returns
/// whether it exited by itself, successfully, and how long it took.
async fn run_until_drained(config: &std::path::Path, limit: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .env("TASKHOST_LOG", "warn")
        .args(["run", "--exit-when-drained", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => (status.unwrap().success(), start.elapsed()),
        Err(_) => {
            child.kill().await.unwrap();
            (false, start.elapsed())
        }
    }
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let json = support::ok(
        support::host()
            .args([
                "status", "--json", "--queue", "q", "--dead", "5", "--config",
            ])
            .arg(config),
    );
    serde_json::from_str(&json).unwrap()
}

/// A call blocked on a response body that never arrives is stopped at the
/// plugin's 1 s time limit and, with one attempt, dead-lettered: well
/// before the HTTP deadline (30 s) and the lease (60 s) would have acted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_blocked_on_an_http_body_is_dead_lettered_at_its_time_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nhalf")
                .await;
            held.push(conn);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let config = script_host(
        tmp.path(),
        &addr.to_string(),
        r#"{ time = "1s" }"#,
        r#"{ max_attempts = 1, max_latency = "10ms" }"#,
    );
    support::ok(
        support::host()
            .args(["push", "q", &format!("get:http://{addr}/slow"), "--config"])
            .arg(&config),
    );
    let (exited, took) = run_until_drained(&config, Duration::from_secs(120)).await;
    println!("a call stuck on an HTTP body: host run drained it in {took:?} (start-up included)");
    assert!(exited, "host run did not drain the stuck task");
    assert!(
        took < Duration::from_secs(20),
        "the 1 s limit did not act (took {took:?})"
    );
    let v = status(&config);
    assert_eq!(v[0]["dead"], 1, "{v}");
    let reason = v[0]["dead_letters"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("time limit of 1s"), "{reason}");
    server.abort();
}

/// `Retry-After` values too large to add to a clock (>= 2^63 s, and past
/// u64) neither panic the host nor stop its pool: every task is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_end_of_time_neither_panics_the_host_nor_stops_the_drain() {
    let server = CountingServer::start_numbered(|n| {
        too_many_requests(if n.is_multiple_of(2) {
            "99999999999999999999"
        } else {
            "18446744073709551615"
        })
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = script_host(
        tmp.path(),
        &server.addr().to_string(),
        r#"{ time = "30s" }"#,
        r#"{ batch_size = 5, max_workers = 2, max_latency = "10ms" }"#,
    );
    let tasks: String = (0..40)
        .map(|i| format!("get:{}/t{i}\n", server.url()))
        .collect();
    let file = tmp.path().join("tasks.txt");
    std::fs::write(&file, tasks).unwrap();
    support::ok(
        support::host()
            .args(["push", "q", "--file"])
            .arg(&file)
            .arg("--config")
            .arg(&config),
    );
    let (exited, _) = run_until_drained(&config, Duration::from_secs(120)).await;
    assert!(exited, "host run did not drain (a worker died?)");
    let v = status(&config);
    assert_eq!(
        (v[0]["pending"].as_u64(), v[0]["dead"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(server.stats().requests.load(Ordering::Relaxed) >= 40);
    server.shutdown().await;
}

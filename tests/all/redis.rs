//! Many real `host run` processes sharing one Redis queue, on a private
//! `redis-server` started by the test (never the machine's default one).
//! The scenarios are the shared ones of `multihost.rs`.

use crate::multihost;
use crate::support::*;
use taskhost_fixtures::redis::RedisServer;

multihost::every_scenario!(
    RedisServer as "redis",
    start: RedisServer::start().unwrap(),
    // Append-only file on: what was acknowledged survives the kill.
    durable: RedisServer::start_with(true).unwrap(),
    crash: kill,
    recover: restart,
);

#[test]
fn status_refresh_collapses_marks_and_enqueues_each_executions_status() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let cases = [
        ("success running error", "running"),
        ("pending success", "running"),
        ("pending scheduled", "pending"),
        ("success error stopped", "error"),
        ("success stopped", "stopped"),
        ("success success", "success"),
    ];
    let executions = 60;
    let mut lines = String::new();
    for _mark in 0..3 {
        for e in 0..executions {
            lines.push_str(&format!(
                "exec-{e}\texec-{e} {}\n",
                cases[e % cases.len()].0
            ));
        }
    }
    lines.push_str("bad\tbad nonsense\n");
    let file = tmp.path().join("marks.tsv");
    std::fs::write(&file, lines).unwrap();
    let out = ok(host()
        .args([
            "push",
            "status-refresh",
            "--keyed",
            "--queue-url",
            &url,
            "--file",
        ])
        .arg(&file));
    assert!(
        out.contains(&format!("pushed {} tasks", executions + 1)),
        "marks of a pending execution collapse: {out}"
    );
    let config = HostToml::new(&tmp.path().join("data"))
        .redis(&url)
        .plugin(&plugin("status-refresh"))
        .string("queue", "status-refresh")
        .raw("config", r#"{ output_queue = "execution-status" }"#)
        .raw("pool", "{ max_attempts = 1 }")
        .plugin(&plugin("archive"))
        .string("queue", "execution-status")
        .dir(&archive, "/archive")
        .write(tmp.path().join("host.toml"));
    let summary = ok(host()
        .args(["run", "--exit-when-drained", "--config"])
        .arg(&config));
    let counts = archived(&archive);
    assert_eq!(counts.len(), executions, "{summary}");
    for e in 0..executions {
        let want = format!("exec-{e} {}", cases[e % cases.len()].1);
        assert_eq!(counts.get(&want), Some(&1), "{want}: {counts:?}");
    }
    let status = ok(host().args([
        "status",
        "--json",
        "--dead",
        "5",
        "--queue",
        "status-refresh",
        "--queue-url",
        &url,
    ]));
    assert!(
        status.contains("nonsense"),
        "bad payload dead-lettered: {status}"
    );
}

//! Operator actions, black box: `host peek`, `host dead retry|purge`,
//! `host cancel`, `host pause|resume` against real stores (disk, a real
//! redis-server and a real PostgreSQL), with and without a running `host run`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use taskhost_fixtures::postgres::PostgresServer;
use taskhost_fixtures::redis::RedisServer;

use crate::support::{host, ok, output, plugin, wait_until};

/// The command-line flags naming one store.
struct Store(Vec<OsString>);

impl Store {
    fn disk(dir: &std::path::Path) -> Self {
        Self(vec!["--data-dir".into(), dir.join("data").into()])
    }

    fn redis(server: &RedisServer) -> Self {
        Self(vec!["--queue-url".into(), server.url().into()])
    }

    fn postgres(server: &PostgresServer) -> Self {
        Self(vec!["--queue-url".into(), server.url().into()])
    }

    /// `host <args> <store flags>`, asserting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        ok(host().args(args).args(&self.0))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Counts of queue `default` from `host status --json`.
    fn status(&self) -> serde_json::Value {
        let v = self.json(&["status", "--json", "--queue", "default"]);
        v[0].clone()
    }

    fn peek_ids(&self, state: &str) -> Vec<u64> {
        let v = self.json(&["peek", "default", "--state", state, "--json"]);
        v["tasks"]
            .as_array()
            .unwrap_or_else(|| panic!("no tasks in {v}"))
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    }

    /// `host run` with testkit in script mode on queue `default`.
    fn run(&self) -> Command {
        let mut c = host();
        c.args(["run", "--plugin"])
            .arg(plugin("testkit"))
            .args(["--set", "mode=script", "--max-attempts", "1"])
            .args(&self.0);
        c
    }
}

/// One `#[test]` per store kind in a module named after `$body`, each
/// calling `$body(&store)` on a fresh store: `disk`, `redis`, `postgres`.
macro_rules! on_every_store {
    ($body:ident) => {
        mod $body {
            use super::*;

            #[test]
            fn disk() {
                let tmp = tempfile::tempdir().unwrap();
                super::$body(&Store::disk(tmp.path()));
            }

            #[test]
            fn redis() {
                let server = RedisServer::start().unwrap();
                super::$body(&Store::redis(&server));
            }

            #[test]
            fn postgres() {
                let server = PostgresServer::start().unwrap();
                super::$body(&Store::postgres(&server));
            }
        }
    };
}

/// Five tasks die; three are retried by id, the rest purged; peek and
/// status agree at each step; a retried task can be cancelled.
fn dead_letters_are_retried_by_id_and_purged(store: &Store) {
    for i in 0..5 {
        store.ok(&["push", "default", &format!("fail:boom-{i}")]);
    }
    ok(store.run().arg("--exit-when-drained"));
    let dead = store.json(&["peek", "default", "--state", "dead", "--json"]);
    let tasks = dead["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 5, "{dead}");
    assert_eq!(tasks[0]["reason"], "boom-0", "{dead}");
    assert_eq!(tasks[0]["payload"], "fail:boom-0");
    assert_eq!(tasks[0]["attempt"], 1);
    let ids: Vec<u64> = tasks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    // Paging by cursor gives the rest.
    let page = store.json(&[
        "peek", "default", "--state", "dead", "--json", "--limit", "2",
    ]);
    assert_eq!(page["next_after"], ids[1], "{page}");
    let after = ids[1].to_string();
    let rest = store.json(&[
        "peek", "default", "--state", "dead", "--json", "--after", &after,
    ]);
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 3, "{rest}");

    let (a, b, c) = (ids[0].to_string(), ids[2].to_string(), ids[4].to_string());
    let out = store.ok(&[
        "dead", "retry", "default", "--id", &a, "--id", &b, "--id", &c,
    ]);
    assert!(out.contains("retried 3 dead letter"), "{out}");
    let out = store.ok(&["dead", "purge", "default"]);
    assert!(out.contains("purged 2 dead letter"), "{out}");

    assert!(store.peek_ids("dead").is_empty());
    assert_eq!(store.peek_ids("pending"), [ids[0], ids[2], ids[4]]);
    let pending = store.json(&["peek", "default", "--json"]);
    assert_eq!(pending["tasks"][0]["attempt"], 0, "delivery count reset");
    let s = store.status();
    assert_eq!(
        (s["pending"].as_u64(), s["dead"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    assert_eq!(s["paused"], false);

    store.ok(&["cancel", "default", &a]);
    assert_eq!(store.peek_ids("pending"), [ids[2], ids[4]]);
    let gone = output(host().args(["cancel", "default", &a]).args(&store.0));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success() && err.contains(&format!("no pending or delayed task {a}")),
        "{err}"
    );
}

on_every_store!(dead_letters_are_retried_by_id_and_purged);

/// A running host whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("TASKHOST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&self, text: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no log line with {text:?}: {e}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pause on a running host stops its leasing (its log says so within a
/// second); tasks pushed meanwhile stay pending; resume drains them.
fn pause_stops_a_running_host_and_resume_drains(store: &Store) {
    store.ok(&["push", "default", "ok"]);
    let running = Running::start(store.run());
    wait_until("the first task done", Duration::from_secs(60), || {
        store.status()["pending"] == 0 && store.status()["leased"] == 0
    });
    let asked = Instant::now();
    store.ok(&["pause", "default"]);
    running.wait_for("queue paused");
    let noticed = asked.elapsed();
    assert_eq!(store.status()["paused"], true);
    for _ in 0..5 {
        store.ok(&["push", "default", "ok"]);
    }
    // The host is told to look at once on every push; give it a few of
    // its poll rounds to (wrongly) take any.
    std::thread::sleep(Duration::from_millis(1500));
    let s = store.status();
    assert_eq!(
        (s["pending"].as_u64(), s["leased"].as_u64()),
        (Some(5), Some(0)),
        "{s}"
    );

    let asked = Instant::now();
    store.ok(&["resume", "default"]);
    running.wait_for("queue resumed");
    let resumed = asked.elapsed();
    wait_until("the paused tasks done", Duration::from_secs(60), || {
        let s = store.status();
        s["pending"] == 0 && s["leased"] == 0
    });
    println!("pause noticed after {noticed:?}, resume after {resumed:?} (CLI start-up included)");
    assert!(noticed < Duration::from_secs(10) && resumed < Duration::from_secs(10));
    drop(running);
}

on_every_store!(pause_stops_a_running_host_and_resume_drains);

#[test]
fn peek_prints_payload_text_and_base64_and_refuses_the_memory_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::disk(tmp.path());
    store.ok(&["push", "default", "hello"]);
    let out = store.ok(&["peek", "default"]);
    assert!(out.contains("payload: hello"), "{out}");
    let v = store.json(&["peek", "default", "--json"]);
    assert_eq!(v["tasks"][0]["payload_base64"], "aGVsbG8=", "{v}");
    let mem = output(host().args(["peek", "default", "--backend", "memory"]));
    assert!(!mem.status.success());
    assert!(String::from_utf8_lossy(&mem.stderr).contains("persistent backend"));
}

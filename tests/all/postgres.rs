//! Many real `host run` processes sharing one PostgreSQL queue, on a
//! private server started by the test (never the machine's own).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::heavy;
use crate::support::*;
use taskhost_fixtures::postgres::PostgresServer;

const HOSTS: usize = 5;
const TASKS: usize = 100_000;
const LONG: Duration = Duration::from_secs(600);
const ARCHIVE_POOL: &str = r#"batch_size = 100, max_workers = 2, lease_ttl = "3s""#;

/// One running `host run` process and where it writes.
struct Host {
    child: Child,
    log: PathBuf,
    out: PathBuf,
}

impl Host {
    fn started(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("serving"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait: the host finishes its batches and prints a summary.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        assert!(
            status.success(),
            "host failed: {status}\n{out}\n{}",
            self.log()
        );
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn out_dir(tmp: &Path, n: usize) -> PathBuf {
    tmp.join(format!("out-{n}"))
}

/// Starts `HOSTS` hosts archiving queue `default` of the database at `url`.
fn start_hosts(tmp: &Path, url: &str) -> Vec<Host> {
    let hosts: Vec<_> = (0..HOSTS)
        .map(|n| {
            let dir = out_dir(tmp, n);
            std::fs::create_dir_all(&dir).unwrap();
            let config = HostToml::new(&tmp.join(format!("data-{n}")))
                .backend("postgres")
                .string("queue_url", url)
                .plugin(&plugin("archive"))
                .dir(&dir, "/out")
                .raw("config", r#"{ dir = "/out" }"#)
                .raw("pool", &format!("{{ {ARCHIVE_POOL} }}"))
                .write(tmp.join(format!("host-{n}.toml")));
            let log = tmp.join(format!("host-{n}.log"));
            let out = tmp.join(format!("host-{n}.out"));
            let child = host()
                .env("TASKHOST_LOG", "info")
                .arg("run")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::from(File::create(&out).unwrap()))
                .stderr(Stdio::from(File::create(&log).unwrap()))
                .spawn()
                .unwrap();
            Host { child, log, out }
        })
        .collect();
    wait_until("every host serving", LONG, || {
        hosts.iter().all(Host::started)
    });
    hosts
}

fn drained(url: &str) -> bool {
    let out = output(host().args(["status", "--json", "--queue-url", url]));
    if !out.status.success() {
        return false; // the server is restarting
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "default").cloned())
        .unwrap_or_else(|| serde_json::json!({"pending": 0, "delayed": 0, "leased": 0}));
    s["pending"] == 0 && s["delayed"] == 0 && s["leased"] == 0
}

fn push_tasks(tmp: &Path, url: &str, n: usize) {
    let payloads = payload_file(tmp, n);
    let pushed = ok(host()
        .args(["push", "default", "--queue-url", url, "--file"])
        .arg(&payloads));
    assert!(pushed.contains(&format!("pushed {n} tasks")), "{pushed}");
}

/// Checks every task was archived; returns (duplicates, per-host counts).
fn check_archived(tmp: &Path) -> (usize, Vec<usize>) {
    let mut all: HashMap<String, usize> = HashMap::new();
    let mut per_host = Vec::new();
    for n in 0..HOSTS {
        let c = archived(&out_dir(tmp, n));
        per_host.push(c.values().sum());
        for (k, v) in c {
            *all.entry(k).or_default() += v;
        }
    }
    let missing: Vec<_> = (0..TASKS)
        .filter(|i| !all.contains_key(&format!("task-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} tasks never done, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(all.len(), TASKS, "no stray records");
    let dups = all.values().map(|&n| n - 1).sum();
    (dups, per_host)
}

fn server() -> PostgresServer {
    PostgresServer::start().unwrap()
}

#[test]
fn five_hosts_drain_a_postgres_queue_each_task_exactly_once() {
    let _g = heavy();
    let pg = server();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(tmp.path(), &url);
    let started = Instant::now();
    push_tasks(tmp.path(), &url, TASKS);
    wait_until("the queue drained", LONG, || drained(&url));
    let took = started.elapsed();
    for h in hosts {
        h.stop();
    }
    let (dups, per_host) = check_archived(tmp.path());
    eprintln!(
        "{TASKS} tasks pushed and drained by {HOSTS} hosts in {took:.1?}: {per_host:?} per host"
    );
    assert_eq!(dups, 0, "no task done twice without a crash");
    for (n, &done) in per_host.iter().enumerate() {
        assert!(
            done * 10 >= TASKS,
            "host {n} did {done} of {TASKS} tasks: {per_host:?}"
        );
    }
}

#[test]
fn a_host_killed_mid_run_on_postgres_loses_nothing() {
    let _g = heavy();
    let pg = server();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let mut hosts = start_hosts(tmp.path(), &url);
    push_tasks(tmp.path(), &url, TASKS);
    let victim = out_dir(tmp.path(), 0);
    wait_until("the victim's first batches", LONG, || {
        archive_files(&victim) >= 20
    });
    let mut victim_host = hosts.remove(0);
    victim_host.child.kill().unwrap(); // SIGKILL: its leases are never settled
    victim_host.child.wait().unwrap();
    let at_kill: usize = (0..HOSTS)
        .map(|n| archived(&out_dir(tmp.path(), n)).len())
        .sum();
    assert!(at_kill < TASKS, "killed mid-run ({at_kill} archived)");
    wait_until("the queue drained", LONG, || drained(&url));
    for h in hosts {
        h.stop();
    }
    let (dups, _) = check_archived(tmp.path());
    // The killed host held at most max_workers batches of batch_size tasks;
    // only those (archived, but never acked) may be done again.
    assert!(dups <= 2 * 100, "{dups} duplicates");
}

#[test]
fn hosts_survive_a_postgres_immediate_restart_mid_run() {
    let _g = heavy();
    let mut pg = server();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(tmp.path(), &url);
    push_tasks(tmp.path(), &url, TASKS);
    wait_until("the first batches", LONG, || {
        archive_files(&out_dir(tmp.path(), 1)) >= 10
    });
    pg.stop_immediate();
    let down = output(host().args(["status", "--queue-url", &url]));
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    // The URL is named with its user info hidden.
    let server = url.split('@').nth(1).unwrap_or(&url);
    assert!(err.contains("unreachable") && err.contains(server), "{err}");
    pg.restart_immediate().unwrap();
    wait_until("the queue drained", LONG, || drained(&url));
    for h in hosts {
        let log = h.log();
        h.stop();
        assert!(
            log.contains("unreachable"),
            "the host logged the outage: {log}"
        );
    }
    check_archived(tmp.path());
}

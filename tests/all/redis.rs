//! Many real `host run` processes sharing one Redis queue, on a private
//! `redis-server` started by the test (never the machine's default one).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::support::*;
use taskhost_fixtures::redis::RedisServer;

const HOSTS: usize = 5;
const TASKS: usize = 100_000;
const LONG: Duration = Duration::from_secs(600);

/// The multi-host runs each use every core; running them one at a time
/// keeps each one's timing (and the machine) sane.
static HEAVY: Mutex<()> = Mutex::new(());

pub(crate) fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

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

    /// SIGTERM, then wait: the host finishes its batches and prints a summary.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "host failed: {status}\n{out}\n{log}");
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a host config serving `queue` with `plugin` and starts `host run`.
fn start_host(
    tmp: &Path,
    n: usize,
    url: &str,
    plugin: &Path,
    dir: &Path,
    extra: &str,
    pool: &str,
) -> Host {
    std::fs::create_dir_all(dir).unwrap();
    let config = HostToml::new(&tmp.join(format!("data-{n}")))
        .redis(url)
        .plugin(plugin)
        .dir(dir, "/out")
        .raw(
            "config",
            &format!(r#"{{ dir = "/out", journal_dir = "/out", host = "h{n}"{extra} }}"#),
        )
        .raw("pool", &format!("{{ {pool} }}"))
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
}

fn start_hosts(tmp: &Path, url: &str, plugin: &Path, extra: &str, pool: &str) -> Vec<Host> {
    let hosts: Vec<_> = (0..HOSTS)
        .map(|n| start_host(tmp, n, url, plugin, &out_dir(tmp, n), extra, pool))
        .collect();
    wait_until("every host serving", LONG, || {
        hosts.iter().all(Host::started)
    });
    hosts
}

fn out_dir(tmp: &Path, n: usize) -> PathBuf {
    tmp.join(format!("out-{n}"))
}

fn status(url: &str) -> serde_json::Value {
    let json = ok(host().args(["status", "--json", "--queue-url", url]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "default").cloned())
        .unwrap_or_else(|| serde_json::json!({"pending": 0, "delayed": 0, "leased": 0}))
}

fn drained(url: &str) -> bool {
    let out = output(host().args(["status", "--json", "--queue-url", url]));
    if !out.status.success() {
        return false; // Redis restarting
    }
    let s = status(url);
    s["pending"] == 0 && s["delayed"] == 0 && s["leased"] == 0
}

fn push_tasks(tmp: &Path, url: &str, n: usize) {
    let payloads = payload_file(tmp, n);
    let pushed = ok(host()
        .args(["push", "default", "--queue-url", url, "--file"])
        .arg(&payloads));
    assert!(pushed.contains(&format!("pushed {n} tasks")), "{pushed}");
}

const ARCHIVE_POOL: &str = r#"batch_size = 100, max_workers = 2, lease_ttl = "3s""#;

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

#[test]
fn five_hosts_share_one_queue_and_do_each_task_exactly_once() {
    let _g = heavy();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(tmp.path(), &url, &plugin("archive"), "", ARCHIVE_POOL);
    push_tasks(tmp.path(), &url, TASKS);
    wait_until("the queue drained", LONG, || drained(&url));
    for h in hosts {
        h.stop();
    }
    let (dups, per_host) = check_archived(tmp.path());
    assert_eq!(dups, 0, "no task done twice without a crash");
    for (n, &done) in per_host.iter().enumerate() {
        assert!(
            done * 10 >= TASKS,
            "host {n} did {done} of {TASKS} tasks: {per_host:?}"
        );
    }
}

#[test]
fn a_host_killed_mid_run_loses_nothing_and_repeats_only_its_leases() {
    let _g = heavy();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let mut hosts = start_hosts(tmp.path(), &url, &plugin("archive"), "", ARCHIVE_POOL);
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
fn hosts_survive_a_redis_restart_mid_run() {
    let _g = heavy();
    let mut redis = RedisServer::start_with(true).unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(tmp.path(), &url, &plugin("archive"), "", ARCHIVE_POOL);
    push_tasks(tmp.path(), &url, TASKS);
    wait_until("the first batches", LONG, || {
        archive_files(&out_dir(tmp.path(), 1)) >= 10
    });
    redis.kill();
    let down = output(host().args(["status", "--queue-url", &url]));
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("unreachable") && err.contains(&url), "{err}");
    redis.restart().unwrap();
    wait_until("the queue drained", LONG, || drained(&url));
    let mut outs = Vec::new();
    for h in hosts {
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        outs.push(h.stop());
        assert!(
            log.contains("unreachable"),
            "the host logged the outage: {log}"
        );
    }
    check_archived(tmp.path());
}

#[test]
fn a_unique_key_is_never_handled_by_two_hosts_at_once() {
    let _g = heavy();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(
        tmp.path(),
        &url,
        &plugin("testkit"),
        r#", mode = "journal", hold_ms = "5""#,
        r#"batch_size = 10, max_workers = 2, lease_ttl = "10s""#,
    );
    let keys = 1_000;
    let lines: String = (0..keys).map(|k| format!("key-{k}\tpayload\n")).collect();
    let file = tmp.path().join("keyed.tsv");
    std::fs::write(&file, lines).unwrap();
    // Ten pushes of every key while the hosts run; keys pending or being
    // handled collapse, the rest are new tasks.
    let mut created = 0;
    for _ in 0..10 {
        let out = ok(host()
            .args(["push", "default", "--keyed", "--queue-url", &url, "--file"])
            .arg(&file));
        let n: usize = out
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("push summary: {out}"));
        created += n;
    }
    wait_until("the queue drained", LONG, || drained(&url));
    for h in hosts {
        h.stop();
    }
    // key -> (start, end, host) of every handling
    let mut spans: HashMap<String, Vec<(u128, u128, String)>> = HashMap::new();
    let mut handled = 0;
    for n in 0..HOSTS {
        for e in std::fs::read_dir(out_dir(tmp.path(), n)).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for line in text.lines() {
                let f: Vec<_> = line.split('\t').collect();
                let (start, end) = (f[4].parse().unwrap(), f[5].parse().unwrap());
                spans
                    .entry(f[1].to_owned())
                    .or_default()
                    .push((start, end, f[0].to_owned()));
                handled += 1;
            }
        }
    }
    assert_eq!(spans.len(), keys, "every key handled");
    assert_eq!(handled, created, "each created task handled once");
    assert!(
        created < 10 * keys,
        "pending keys collapsed ({created} created)"
    );
    let mut cross_host = 0;
    for (key, mut s) in spans {
        s.sort();
        for w in s.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "key {key} handled by {} during {:?} and by {} during {:?}",
                w[0].2,
                (w[0].0, w[0].1),
                w[1].2,
                (w[1].0, w[1].1)
            );
            cross_host += usize::from(w[0].2 != w[1].2);
        }
    }
    eprintln!("{created} tasks for {keys} keys; {cross_host} hand-overs between hosts");
}

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

//! The multi-host scenarios every shared-store backend (Redis, PostgreSQL)
//! must pass, one body each, run by `redis.rs` and `postgres.rs` against
//! their private servers: real `host run` processes sharing one queue.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) const HOSTS: usize = 5;
pub(crate) const TASKS: usize = 100_000;
pub(crate) const LONG: Duration = Duration::from_secs(600);
pub(crate) const ARCHIVE_POOL: &str = r#"batch_size = 100, max_workers = 2, lease_ttl = "3s""#;

/// The multi-host runs each use every core; running them one at a time
/// keeps each one's timing (and the machine) sane.
static HEAVY: Mutex<()> = Mutex::new(());

pub(crate) fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A shared store: the backend's name in the config and its URL, how many
/// hosts share it, and a table the hosts' config adds (`[redis]` settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Store<'a> {
    pub backend: &'a str,
    pub url: &'a str,
    pub hosts: usize,
    pub table: Option<(&'a str, &'a str)>,
}

impl<'a> Store<'a> {
    /// [`HOSTS`] hosts on the store `backend` at `url`.
    pub(crate) fn new(backend: &'a str, url: &'a str) -> Self {
        Self {
            backend,
            url,
            hosts: HOSTS,
            table: None,
        }
    }
}

/// A server a test can take down and bring back.
pub(crate) trait Outage {
    /// Stops the server as a crash would.
    fn down(&mut self);
    /// Starts it again on the same port and data.
    fn up(&mut self);
}

/// The scenarios as `#[test]`s in the calling module, each on a fresh
/// private `$server` from `$start` (`$durable` where the server is crashed
/// and must keep what it acknowledged), with `$backend` as the config names
/// it; `$server` crashes with its method `$crash` and comes back with
/// `$recover`.
macro_rules! every_scenario {
    (
        $server:ty as $backend:literal,
        start: $start:expr,
        durable: $durable:expr,
        crash: $crash:ident,
        recover: $recover:ident $(,)?
    ) => {
        impl $crate::multihost::Outage for $server {
            fn down(&mut self) {
                self.$crash();
            }

            fn up(&mut self) {
                self.$recover().unwrap();
            }
        }

        $crate::multihost::every_scenario!(@test $backend, hosts_drain_each_task_exactly_once, $start);
        $crate::multihost::every_scenario!(@test $backend, a_killed_host_loses_nothing, $start);
        $crate::multihost::every_scenario!(@test $backend, a_unique_key_is_never_handled_twice_at_once, $start);
        $crate::multihost::every_scenario!(@test $backend, hosts_survive_an_outage, $durable, outage);
    };
    // `outage`: the scenario also takes the server, to crash it.
    (@test $backend:literal, $scenario:ident, $start:expr $(, $outage:ident)?) => {
        #[test]
        fn $scenario() {
            #[allow(unused_mut)]
            let mut server = $start;
            let url = server.url();
            $crate::multihost::$scenario(
                $crate::multihost::Store::new($backend, &url)
                $(, { let $outage = &mut server; $outage })?
            );
        }
    };
}
pub(crate) use every_scenario;

/// One running `host run` process and where it writes.
pub(crate) struct Host {
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
    pub(crate) fn stop(mut self) -> String {
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

/// Writes a host config serving queue `default` with `plugin` (its
/// `/out` is `dir`) on `store` and starts `host run`.
fn start_host(
    tmp: &Path,
    n: usize,
    store: Store,
    plugin: &Path,
    dir: &Path,
    extra: &str,
    pool: &str,
) -> Host {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = HostToml::new(&tmp.join(format!("data-{n}")))
        .backend(store.backend)
        .string("queue_url", store.url);
    if let Some((key, value)) = store.table {
        config = config.raw(key, value);
    }
    let config = config
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

/// Starts the store's hosts and waits until each serves.
pub(crate) fn start_hosts(
    tmp: &Path,
    store: Store,
    plugin: &Path,
    extra: &str,
    pool: &str,
) -> Vec<Host> {
    let hosts: Vec<_> = (0..store.hosts)
        .map(|n| start_host(tmp, n, store, plugin, &out_dir(tmp, n), extra, pool))
        .collect();
    wait_until("every host serving", LONG, || {
        hosts.iter().all(Host::started)
    });
    hosts
}

pub(crate) fn archive_hosts(tmp: &Path, store: Store) -> Vec<Host> {
    start_hosts(tmp, store, &plugin("archive"), "", ARCHIVE_POOL)
}

pub(crate) fn out_dir(tmp: &Path, n: usize) -> PathBuf {
    tmp.join(format!("out-{n}"))
}

/// Whether queue `default` holds nothing (false while the server is down).
pub(crate) fn drained(url: &str) -> bool {
    let out = output(host().args(["status", "--json", "--queue-url", url]));
    if !out.status.success() {
        return false;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "default").cloned())
        .unwrap_or_else(|| serde_json::json!({"pending": 0, "delayed": 0, "leased": 0}));
    s["pending"] == 0 && s["delayed"] == 0 && s["leased"] == 0
}

pub(crate) fn push_tasks(tmp: &Path, url: &str, n: usize) {
    push_range(tmp, url, 0..n);
}

/// Pushes the tasks `task-<i>` for each `i` of `range`.
pub(crate) fn push_range(tmp: &Path, url: &str, range: std::ops::Range<usize>) {
    let n = range.len();
    let payloads = payload_range_file(tmp, range);
    let pushed = ok(host()
        .args(["push", "default", "--queue-url", url, "--file"])
        .arg(&payloads));
    assert!(pushed.contains(&format!("pushed {n} tasks")), "{pushed}");
}

/// Checks every task was archived; returns (duplicates, per-host counts).
pub(crate) fn check_archived(tmp: &Path, hosts: usize) -> (usize, Vec<usize>) {
    let mut all: HashMap<String, usize> = HashMap::new();
    let mut per_host = Vec::new();
    for n in 0..hosts {
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

/// The store's hosts drain [`TASKS`] tasks: each exactly once, every host
/// at least 10 %.
pub(crate) fn hosts_drain_each_task_exactly_once(store: Store) {
    let _g = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = archive_hosts(tmp.path(), store);
    let started = Instant::now();
    push_tasks(tmp.path(), store.url, TASKS);
    wait_until("the queue drained", LONG, || drained(store.url));
    let took = started.elapsed();
    for h in hosts {
        h.stop();
    }
    let (dups, per_host) = check_archived(tmp.path(), store.hosts);
    eprintln!(
        "{}: {TASKS} tasks pushed and drained by {} hosts in {took:.1?}: {per_host:?} per host",
        store.backend, store.hosts
    );
    assert_eq!(dups, 0, "no task done twice without a crash");
    for (n, &done) in per_host.iter().enumerate() {
        assert!(
            done * 10 >= TASKS,
            "host {n} did {done} of {TASKS} tasks: {per_host:?}"
        );
    }
}

/// Waits until some host has written `files` archive files; answers which.
pub(crate) fn first_host_with(tmp: &Path, hosts: usize, files: usize) -> usize {
    let mut found = None;
    wait_until(&format!("a host's first {files} batches"), LONG, || {
        found = (0..hosts).find(|&n| archive_files(&out_dir(tmp, n)) >= files);
        found.is_some()
    });
    found.unwrap_or_default()
}

/// One host SIGKILLed mid-run: every task done, duplicates no more than
/// what it held.
pub(crate) fn a_killed_host_loses_nothing(store: Store) {
    let _g = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let mut hosts = archive_hosts(tmp.path(), store);
    // Half the tasks go in before the kill and half after it. Pushing all
    // of them first let a slow push finish with the queue nearly drained
    // (the hosts drain while it runs), so the kill came after the end.
    let half = TASKS / 2;
    push_tasks(tmp.path(), store.url, half);
    // The victim is the first host with 20 batches done: a host that the
    // others outran (SKIP LOCKED on a busy machine) could reach 20 only when
    // the queue is nearly drained, and the kill would no longer be mid-run.
    let victim = first_host_with(tmp.path(), store.hosts, 20);
    let mut victim_host = hosts.remove(victim);
    victim_host.child.kill().unwrap(); // SIGKILL: its leases are never settled
    victim_host.child.wait().unwrap();
    let at_kill: usize = (0..store.hosts)
        .map(|n| archived(&out_dir(tmp.path(), n)).len())
        .sum();
    // Fewer archived than pushed: the queue still held tasks at the kill.
    assert!(
        at_kill < half,
        "killed mid-run ({at_kill} of {half} archived)"
    );
    push_range(tmp.path(), store.url, half..TASKS);
    wait_until("the queue drained", LONG, || drained(store.url));
    for h in hosts {
        h.stop();
    }
    let (dups, _) = check_archived(tmp.path(), store.hosts);
    // The killed host held at most max_workers batches of batch_size tasks;
    // only those (archived, but never acked) may be done again.
    assert!(dups <= 2 * 100, "{dups} duplicates");
}

/// The server goes down mid-run and comes back: `host status` names it
/// unreachable (by the URL without its user info) meanwhile, every host
/// logs the outage, and every task is done.
pub(crate) fn hosts_survive_an_outage(store: Store, server: &mut dyn Outage) {
    let _g = heavy();
    let shown = store.url.rsplit('@').next().unwrap_or(store.url);
    let tmp = tempfile::tempdir().unwrap();
    let hosts = archive_hosts(tmp.path(), store);
    // As in the kill test, half goes in after the outage, so the hosts are
    // busy when the server goes and still have work when it is back.
    let half = TASKS / 2;
    push_tasks(tmp.path(), store.url, half);
    first_host_with(tmp.path(), store.hosts, 10);
    server.down();
    let down = output(host().args(["status", "--queue-url", store.url]));
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("unreachable") && err.contains(shown), "{err}");
    server.up();
    push_range(tmp.path(), store.url, half..TASKS);
    wait_until("the queue drained", LONG, || drained(store.url));
    for h in hosts {
        let log = h.log();
        h.stop();
        assert!(
            log.contains("unreachable"),
            "the host logged the outage: {log}"
        );
    }
    check_archived(tmp.path(), store.hosts);
}

/// 1,000 unique keys pushed 10 times while hosts run (the testkit journal
/// records each handling's start and end): no key is handled by two hosts
/// at once, each created task is handled once, and pushes of a pending
/// key collapse.
pub(crate) fn a_unique_key_is_never_handled_twice_at_once(store: Store) {
    let _g = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = start_hosts(
        tmp.path(),
        store,
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
            .args([
                "push",
                "default",
                "--keyed",
                "--queue-url",
                store.url,
                "--file",
            ])
            .arg(&file));
        let n: usize = out
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("push summary: {out}"));
        created += n;
    }
    wait_until("the queue drained", LONG, || drained(store.url));
    for h in hosts {
        h.stop();
    }
    // key -> (start, end, host) of every handling
    let mut spans: HashMap<String, Vec<(u128, u128, String)>> = HashMap::new();
    let mut handled = 0;
    for n in 0..store.hosts {
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
    eprintln!(
        "{}: {created} tasks for {keys} keys; {cross_host} hand-overs between hosts",
        store.backend
    );
}

//! The fleet (issue 15 part 1, issue 16's host registry): real `host`
//! processes on disk, on a private `redis-server` and on a private
//! PostgreSQL; each scenario is one body run per backend. A host killed with
//! SIGKILL mid-drain leaves leases with a 60 s `lease_ttl`; the host that
//! replaces it reclaims them at start, because their holder is provably
//! gone. `host hosts` lists every host on a Redis or PostgreSQL, whatever
//! its data directory, and `host reload --queue-url` reaches them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::hotswap::{version_of, with_custom_section};
use crate::support::*;
use taskhost_fixtures::postgres::PostgresServer;
use taskhost_fixtures::redis::RedisServer;

const TASKS: usize = 1_000;
const START: Duration = Duration::from_secs(120);

/// The keys of every task the journal plugin finished, from its files.
fn journaled(dir: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(key) = line.split('\t').nth(1) {
                keys.insert(key.to_owned());
            }
        }
    }
    keys
}

/// `host status --json` of queue `default`.
fn queue_status(config: &Path) -> serde_json::Value {
    let json = ok(host()
        .args(["status", "--json", "--queue", "default", "--config"])
        .arg(config));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0].clone()
}

/// A shared store: its backend's name and URL (None: disk).
type Shared<'a> = Option<(&'a str, &'a str)>;

/// `toml` on the shared store, if any.
fn on(toml: HostToml, store: Shared) -> HostToml {
    match store {
        Some((backend, url)) => toml.backend(backend).string("queue_url", url),
        None => toml,
    }
}

/// A config on `data` (and the shared store, if given) running the journal
/// plugin with batches of 10 on 4 workers, each batch taking `hold_ms`.
fn journal_config(tmp: &Path, store: Shared, journal: &Path, hold_ms: u64) -> PathBuf {
    let toml = on(HostToml::new(&tmp.join("data")), store);
    // `lease_ttl` stays at its 60 s default: only reclaiming the dead
    // host's leases lets the restart drain within seconds.
    toml.plugin(&plugin("testkit"))
        .dir(journal, "/out")
        .raw(
            "config",
            &format!(
                r#"{{ mode = "journal", journal_dir = "/out", host = "h", hold_ms = "{hold_ms}" }}"#
            ),
        )
        .raw("pool", r#"{ batch_size = 10, max_workers = 4 }"#)
        .write(tmp.join(format!("host-{hold_ms}.toml")))
}

/// Pushes [`TASKS`] keyed tasks; starts a host whose batches take a minute
/// and kills it with SIGKILL once its 4 workers hold 40 tasks under lease
/// (`lease_ttl` 60 s); then runs `host run --exit-when-drained` on the same
/// data directory (batches of 100 ms) and returns the seconds from that
/// start to its exit; asserts every task was done and none is left.
fn kill_mid_drain_then_restart(store: Shared) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let slow = journal_config(tmp.path(), store, &journal, 60_000);
    let config = journal_config(tmp.path(), store, &journal, 100);
    let lines: String = (0..TASKS).map(|i| format!("k{i}\tt{i}\n")).collect();
    let file = tmp.path().join("tasks.tsv");
    std::fs::write(&file, lines).unwrap();
    ok(host()
        .args(["push", "default", "--keyed", "--config"])
        .arg(&config)
        .arg("--file")
        .arg(&file));

    let mut first = Running::with_config(&slow);
    // Its batches are under way and stay so (a minute each): the kill
    // finds every worker holding a lease.
    wait_until("4 batches under lease", START, || {
        queue_status(&config)["leased"] == 40
    });
    first.0.kill().unwrap(); // SIGKILL: its leases are left behind
    first.0.wait().unwrap();
    let left = queue_status(&config);
    assert_eq!(left["leased"], 40, "the killed host's leases: {left}");

    let started = Instant::now();
    let out = run_until_drained(&config);
    let secs = started.elapsed().as_secs_f64();
    let done = journaled(&journal);
    let lost: Vec<_> = (0..TASKS)
        .map(|i| format!("k{i}"))
        .filter(|k| !done.contains(k))
        .collect();
    assert_none_lost(&lost, &out);
    let end = queue_status(&config);
    assert_eq!(end["pending"], 0, "{end}");
    assert_eq!(end["leased"], 0, "{end}");
    assert_eq!(end["dead"], 0, "{end}");
    secs
}

/// Runs [`kill_mid_drain_then_restart`] and checks the restart drained
/// within 10 s (it waited 60 s for `lease_ttl` before leases were
/// reclaimed from gone holders).
fn restart_after_kill_drains_at_once(name: &str, store: Shared) {
    let secs = kill_mid_drain_then_restart(store);
    println!("{name}: restart to drained after kill -9: {secs:.2} s");
    assert!(
        secs < 10.0,
        "the restart took {secs:.1} s to drain (the dead host's leases waited for lease_ttl?)"
    );
}

#[test]
fn disk_restart_after_kill_drains_the_dead_hosts_leases_at_once() {
    restart_after_kill_drains_at_once("disk", None);
}

#[test]
fn redis_restart_after_kill_drains_the_dead_hosts_leases_at_once() {
    let server = RedisServer::start().unwrap();
    restart_after_kill_drains_at_once("redis", Some(("redis", &server.url())));
}

#[test]
fn postgres_restart_after_kill_drains_the_dead_hosts_leases_at_once() {
    let server = PostgresServer::start().unwrap();
    restart_after_kill_drains_at_once("postgres", Some(("postgres", &server.url())));
}

/// `host hosts --json` with this config.
fn hosts_json(config: &Path) -> Vec<serde_json::Value> {
    let json = ok(host().args(["hosts", "--json", "--config"]).arg(config));
    serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// Writes a config for a host on the shared store with its own data
/// directory, and starts it.
fn shared_host(tmp: &Path, n: usize, store: Shared, plugin: &Path) -> (PathBuf, Running) {
    let config = on(HostToml::new(&tmp.join(format!("data-{n}"))), store)
        .raw("runtime", "{ watch = false }")
        .plugin(plugin)
        .raw("config", r#"{ mode = "noop" }"#)
        .write(tmp.join(format!("host-{n}.toml")));
    let running = Running::with_config(&config);
    (config, running)
}

#[test]
fn two_hosts_on_one_redis_see_each_other_and_reload_reaches_them() {
    let server = RedisServer::start().unwrap();
    two_hosts_see_each_other_and_reload_reaches_them(("redis", &server.url()));
}

#[test]
fn two_hosts_on_one_postgres_see_each_other_and_reload_reaches_them() {
    let server = PostgresServer::start().unwrap();
    two_hosts_see_each_other_and_reload_reaches_them(("postgres", &server.url()));
}

/// Two hosts with their own data directories on one shared store: each
/// lists both (`host hosts`, `host status`), and `host reload` reaches both.
fn two_hosts_see_each_other_and_reload_reaches_them(store: (&str, &str)) {
    let url = store.1.to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tk.wasm");
    let a = std::fs::read(plugin("testkit")).unwrap();
    std::fs::write(&path, &a).unwrap();
    let (c0, _h0) = shared_host(tmp.path(), 0, Some(store), &path);
    let (c1, _h1) = shared_host(tmp.path(), 1, Some(store), &path);

    // Each sees both, from its own data directory. A host registers before
    // its pools start (with no workers yet) and beats again once they run.
    for config in [&c0, &c1] {
        wait_until("both hosts registered and serving", START, || {
            let hosts = hosts_json(config);
            hosts.len() == 2 && hosts.iter().all(|h| h["plugins"][0]["max_workers"] != 0)
        });
    }
    let hosts = hosts_json(&c0);
    let ids: HashSet<_> = hosts.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{hosts:?}");
    let dirs: HashSet<_> = hosts.iter().map(|h| h["data_dir"].to_string()).collect();
    assert_eq!(dirs.len(), 2, "{hosts:?}");
    for h in &hosts {
        assert!(h["pid"].as_u64().unwrap() > 1, "{h}");
        assert!(!h["machine"].as_str().unwrap().is_empty(), "{h}");
        assert!(h["last_heartbeat_ms"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["plugins"][0]["version"], version_of(&a), "{h}");
        assert_eq!(h["plugins"][0]["max_workers"], 4, "{h}");
    }
    // `GET /v1/hosts` of an API node on the same store (it runs no
    // plugins, so it is no host itself) lists the same two.
    let api = crate::api::Listening::start(host().args([
        "serve",
        "--queue-url",
        &url,
        "--listen",
        "127.0.0.1:0",
    ]));
    let body = crate::api::get_json(&api.addr, "/v1/hosts");
    let listed = body["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{body}"));
    let api_ids: HashSet<_> = listed.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(api_ids, ids, "{body}");
    api.stop();
    let text = ok(host().args(["hosts", "--queue-url", &url]));
    assert_eq!(text.matches("plugin tk version").count(), 2, "{text}");
    // `host status` over the shared store lists them too (over Redis it
    // used to list none).
    let status = ok(host().args(["status", "--queue-url", &url]));
    assert_eq!(status.matches("host pid").count(), 2, "{status}");

    // Both listen for reload requests once running: a reload of the
    // unchanged file reaches both (and changes nothing).
    wait_until("both hosts listening for reloads", START, || {
        let out = output(host().args(["reload", "--queue-url", &url]));
        String::from_utf8_lossy(&out.stdout).contains("asked 2 host(s)")
    });
    let b = with_custom_section(&a, "fleet reload");
    std::fs::write(&path, &b).unwrap();
    let out = ok(host().args(["reload", "--queue-url", &url]));
    assert!(out.contains("asked 2 host(s)"), "{out}");
    wait_until("both hosts on the new version", START, || {
        let hosts = hosts_json(&c1);
        hosts.len() == 2
            && hosts
                .iter()
                .all(|h| h["plugins"][0]["version"] == version_of(&b))
    });
}

#[test]
fn hosts_on_disk_lists_the_running_host_and_reload_without_one_names_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = ok(host().args(["hosts", "--data-dir"]).arg(&data));
    assert!(out.contains("(no hosts)"), "{out}");
    let config = HostToml::new(&data)
        .plugin(&plugin("testkit"))
        .raw("config", r#"{ mode = "noop" }"#)
        .write(tmp.path().join("host.toml"));
    let _h = Running::with_config(&config);
    wait_until("the host registered", START, || {
        hosts_json(&config).len() == 1
    });
    let h = &hosts_json(&config)[0];
    assert_eq!(h["plugins"][0]["name"], "testkit", "{h}");
    assert!(
        h["id"].as_str().unwrap().contains(&h["pid"].to_string()),
        "{h}"
    );

    let server = RedisServer::start().unwrap();
    let out = output(host().args(["reload", "--queue-url", &server.url()]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no host is listening on redis at"), "{err}");
}

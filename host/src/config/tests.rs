//! Configuration parsing and checks.
use super::*;

#[test]
fn timers_that_would_overflow_or_outlive_the_lease_are_refused() {
    let refused = |pool: &str| {
        let c = HostConfig::parse(&format!(
            "[[plugins]]\npath = \"x.wasm\"\n[plugins.pool]\n{pool}"
        ))
        .unwrap();
        c.validate().unwrap_err().to_string()
    };
    let e = refused("interval = \"500000000years\"");
    assert!(e.contains("interval") && e.contains("longer than"), "{e}");
    let e = refused("lease_ttl = \"500000000years\"");
    assert!(e.contains("lease_ttl"), "{e}");
    let e = refused("max_latency = \"10s\"\nlease_ttl = \"5s\"");
    assert!(
        e.contains("max_latency 10s must be shorter than lease_ttl 5s"),
        "{e}"
    );
    let e = refused("interval = \"5s\"\nlease_ttl = \"5s\"");
    assert!(
        e.contains("interval 5s must be shorter than lease_ttl 5s"),
        "{e}"
    );
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(HostConfig::parse("").unwrap(), HostConfig::default());
}

#[test]
fn full_file_parses() {
    let c = HostConfig::parse(
        r#"
        data_dir = "/var/lib/taskhost"
        backend = "memory"
        [memory]
        capacity = 10
        push_timeout = "500ms"
        [[plugins]]
        path = "archive.wasm"
        queue = "archive"
        dir = { host = "/srv/archive", guest = "/archive" }
        config = { dir = "/archive" }
        limits = { memory_mib = 32, time = "5s" }
        pool = { batch_size = 50, max_workers = 2, retry_backoff = { base = "2s", max = "1m" } }
        "#,
    )
    .unwrap();
    assert_eq!(c.backend, Backend::Memory);
    assert_eq!(c.memory.capacity, 10);
    let p = &c.plugins[0];
    assert_eq!(p.display_name(), "archive");
    assert_eq!(p.pool.batch_size, 50);
    assert_eq!(p.pool.retry_backoff.base, Duration::from_secs(2));
    assert_eq!(p.limits.time, Duration::from_secs(5));
    assert_eq!(p.dir.as_ref().unwrap().guest, "/archive");
    c.validate().unwrap();
}

#[test]
fn redis_needs_a_url() {
    let c = HostConfig::parse("backend = \"redis\"").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("queue_url"), "{e}");
    let c = HostConfig::parse("queue_url = \"redis://127.0.0.1:1/0\"").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("backend"), "{e}");
    let c = HostConfig::parse(
        "backend = \"redis\"\nqueue_url = \"redis://127.0.0.1:1/0\"\n[redis]\ncapacity = 5",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.redis.capacity, Some(5));
}

#[test]
fn mistakes_are_named() {
    let e = HostConfig::parse("backend = \"mongo\"").unwrap_err();
    assert!(e.contains("mongo"), "{e}");
    let e = HostConfig::parse("[[plugins]]\npath = \"a.wasm\"\nbatch_size = 3").unwrap_err();
    assert!(e.contains("batch_size"), "{e}");
    let c = HostConfig::parse("[[plugins]]\npath = \"a.wasm\"\npool = { batch_size = 0 }").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("plugins[0] (a): pool.batch_size"), "{e}");
}

#[test]
fn http_triggers_and_sources_parse() {
    let c = HostConfig::parse(
        r#"
        [http]
        pool_idle_per_host = 4
        host_rate = 20.0
        deadline = "5s"
        ca_file = "private-ca.pem"
        [[plugins]]
        path = "log-report.wasm"
        allowed_hosts = ["gitea.local:3000"]
        pool = { max_latency = "3s", interval = "5s", urgent_key_prefix = "urgent:" }
        [[plugins]]
        path = "old.wasm"
        pool = { debounce = "250ms" }
        [[sources]]
        path = "http-source.wasm"
        queue = "jobs"
        allowed_hosts = ["gitea.local:3000"]
        poll = { poll_interval = "2s", poll_interval_max = "60s", capacity = 3 }
        "#,
    )
    .unwrap();
    assert_eq!(c.http.pool_idle_per_host, 4);
    assert_eq!(c.http.host_rate, Some(20.0));
    assert_eq!(c.http.ca_file, Some(PathBuf::from("private-ca.pem")));
    let p = &c.plugins[0];
    assert_eq!(p.spec().allowed_hosts, ["gitea.local:3000"]);
    assert_eq!(p.pool.max_latency, Duration::from_secs(3));
    assert_eq!(p.pool.interval, Some(Duration::from_secs(5)));
    assert_eq!(
        c.plugins[1].pool.max_latency,
        Duration::from_millis(250),
        "debounce is max_latency's old name"
    );
    let s = &c.sources[0];
    assert_eq!(
        (s.display_name().as_str(), s.queue.as_str()),
        ("http-source", "jobs")
    );
    assert_eq!(s.poll.poll_interval_max, Duration::from_secs(60));
    assert!(c.plugins[0].spec().allowed_hosts.len() == 1);
    assert!(
        PluginConfig::new("x.wasm").allowed_hosts.is_empty(),
        "fail closed"
    );
}

#[test]
fn dir_grants_cannot_reach_host_state() {
    let grant = |dir: &str| {
        HostConfig::parse(&format!(
            "data_dir = \"/srv/th\"\n[[plugins]]\npath = \"a.wasm\"\ndir = {{ host = \"{dir}\", guest = \"/d\" }}"
        ))
        .unwrap()
        .validate()
    };
    for bad in [
        "/srv/th",
        "/srv",
        "/",
        "/srv/th/cache",
        "/srv/th/cache/x",
        "/srv/th/a/../cache",
    ] {
        let e = grant(bad).unwrap_err().to_string();
        assert!(e.contains("plugin a: dir"), "{bad}: {e}");
    }
    grant("/srv/th/archive").unwrap();
    grant("/srv/other").unwrap();
}

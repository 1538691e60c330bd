//! The HTTP listener of real `host run --listen` / `host serve` processes,
//! over real HTTP on 127.0.0.1: producer API, metrics, tokens and errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use taskhost_fixtures::redis::RedisServer;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A host with a listener, killed if the test fails before it ends.
pub struct Listening {
    child: Child,
    /// `127.0.0.1:PORT` to connect to.
    pub addr: String,
    /// The host's log lines after the "api listening" one.
    log: mpsc::Receiver<String>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Listening {
    /// Spawns `cmd` and waits for its "api listening" log line.
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .env("TASKHOST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning host");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading so the host never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            match rx.recv_timeout(LIMIT) {
                Ok(line) => {
                    if line.contains("api listening")
                        && let Some(a) = line.split("addr=").nth(1)
                    {
                        let a = a.split_whitespace().next().unwrap().to_owned();
                        break a.replace("0.0.0.0:", "127.0.0.1:");
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the host never listened; its log:\n{}", seen.join("\n"));
                }
            }
        };
        Self {
            child,
            addr,
            log: rx,
        }
    }

    /// Waits for a log line containing `needle`; panics after `LIMIT`.
    pub fn wait_for_log(&self, needle: &str) {
        loop {
            match self.log.recv_timeout(LIMIT) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut status = None;
        wait_until("the host to exit", LIMIT, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        assert!(status.unwrap().success(), "{status:?}");
    }
}

/// `host run` of the testkit component at `path` in its no-op mode, its
/// API on a free port; the caller adds the data directory and store.
pub(crate) fn noop_host(path: &Path) -> Command {
    let mut cmd = host();
    cmd.args(["run", "--plugin"])
        .arg(path)
        .args(["--set", "mode=noop", "--listen", "127.0.0.1:0"]);
    cmd
}

/// One HTTP/1.1 request; returns the status and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // One write: the server reads the body with the head even when it
    // answers without wanting it (413), so the close is clean.
    let _ = s.write_all(&bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `GET path`, which must answer 200 with JSON.
pub(crate) fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, &[], b"");
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// The entry of the array `v[list]` whose `key` is `value`.
pub(crate) fn entry(
    v: &serde_json::Value,
    list: &str,
    key: &str,
    value: &str,
) -> Option<serde_json::Value> {
    v[list]
        .as_array()?
        .iter()
        .find(|e| e[key] == value)
        .cloned()
}

/// `/metrics`, parsed: value by metric name (a counter's `_total` name
/// too) and labels.
pub(crate) fn metrics(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

pub(crate) fn metric(
    s: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            (x.metric == name || x.metric == format!("{name}_total"))
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        })
}

/// [`metric`] with the labels written `k=v,k=v` (or `""` for none).
pub(crate) fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &str) -> Option<f64> {
    let labels: Vec<_> = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    metric(s, name, &labels)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Pushes 10,000 tasks (NDJSON and JSON, text and base64) to a running
/// testkit host, drains them and checks the answers and `/metrics`.
fn push_drain_and_count(data: &Path, store: &[String]) {
    let host = Listening::start(
        noop_host(&plugin("testkit"))
            .arg("--data-dir")
            .arg(data)
            .args(store),
    );
    let a = host.addr.as_str();
    let url = "/v1/queues/default/tasks";
    let mut ids = std::collections::HashSet::new();
    for part in 0..4 {
        let records: Vec<serde_json::Value> = (0..2_500)
            .map(|i| {
                let payload = format!("task-{part}-{i}");
                if part % 2 == 0 {
                    serde_json::json!({ "payload": payload })
                } else {
                    // Binary: a NUL and a byte that is not UTF-8.
                    let mut b = payload.into_bytes();
                    b.extend_from_slice(&[0, 0xff]);
                    serde_json::json!({ "payload_base64": b64(&b) })
                }
            })
            .collect();
        let (status, body) = if part < 2 {
            let ndjson: String = records.iter().map(|r| format!("{r}\n")).collect();
            http(
                a,
                "POST",
                url,
                &[("Content-Type", "application/x-ndjson")],
                ndjson.as_bytes(),
            )
        } else {
            let env = serde_json::json!({ "tasks": records }).to_string();
            http(
                a,
                "POST",
                url,
                &[("Content-Type", "application/json")],
                env.as_bytes(),
            )
        };
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        assert_eq!(v["created"], 2_500, "{body:.300}");
        let tasks = v["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2_500);
        for t in tasks {
            assert_eq!(t["result"], "created");
            assert!(ids.insert(t["id"].as_u64().unwrap()), "id given twice: {t}");
        }
    }
    // Unique keys, on a queue nobody serves: the second push names the first's ids.
    let keyed: String = (0..10)
        .map(|i| format!("{{\"payload\":\"k{i}\",\"unique_key\":\"key-{i}\"}}\n"))
        .collect();
    let (s1, first) = http(a, "POST", "/v1/queues/keys/tasks", &[], keyed.as_bytes());
    let (s2, second) = http(a, "POST", "/v1/queues/keys/tasks", &[], keyed.as_bytes());
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    let (first, second) = (json(&first), json(&second));
    assert_eq!(
        (first["created"].as_u64(), second["duplicate"].as_u64()),
        (Some(10), Some(10))
    );
    for (x, y) in first["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .zip(second["tasks"].as_array().unwrap())
    {
        assert_eq!(y["result"], "duplicate");
        assert_eq!(x["id"], y["id"]);
    }

    let mut last = None;
    wait_until("10,000 tasks done", LIMIT, || {
        let m = metrics(a);
        let drained = sample(&m, "taskhost_tasks_settled", "queue=default,outcome=done")
            == Some(10_000.0)
            && ["pending", "leased"].iter().all(|state| {
                let labels = format!("queue=default,state={state}");
                sample(&m, "taskhost_queue_tasks", &labels).unwrap_or(0.0) == 0.0
            });
        last = Some(m);
        drained
    });
    let m = last.unwrap();
    let expect = [
        (
            "taskhost_tasks_pushed",
            "queue=default,result=created",
            10_000.0,
        ),
        ("taskhost_tasks_pushed", "queue=keys,result=created", 10.0),
        ("taskhost_tasks_pushed", "queue=keys,result=duplicate", 10.0),
        ("taskhost_tasks_settled", "queue=default,outcome=dead", 0.0),
        ("taskhost_tasks_settled", "queue=default,outcome=retry", 0.0),
        ("taskhost_queue_tasks", "queue=keys,state=pending", 10.0),
        ("taskhost_queue_tasks", "queue=default,state=dead", 0.0),
        ("taskhost_backend_up", "", 1.0),
        ("taskhost_workers_max", "queue=default", 4.0),
        ("taskhost_plugin_info", "plugin=testkit", 1.0),
    ];
    for (name, labels, want) in expect {
        assert_eq!(sample(&m, name, labels), Some(want), "{name} {labels}");
    }
    let queues = get_json(a, "/v1/queues");
    let keys = entry(&queues, "queues", "queue", "keys");
    assert_eq!(
        keys.map(|k| k["pending"].clone()),
        Some(10.into()),
        "{queues}"
    );
    host.stop();
}

#[test]
fn api_push_10000_drain_and_metrics_disk() {
    let tmp = tempfile::tempdir().unwrap();
    push_drain_and_count(&tmp.path().join("data"), &[]);
}

#[test]
fn api_push_10000_drain_and_metrics_redis() {
    let redis = RedisServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    push_drain_and_count(
        &tmp.path().join("data"),
        &["--queue-url".into(), redis.url()],
    );
}

#[test]
fn api_push_10000_drain_and_metrics_postgres() {
    let pg = taskhost_fixtures::postgres::PostgresServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    push_drain_and_count(&tmp.path().join("data"), &["--queue-url".into(), pg.url()]);
}

#[test]
fn api_non_loopback_listen_without_token_file_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for out in [
        output(
            host()
                .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
                .arg(&data),
        ),
        output(
            host()
                .args(["run", "--plugin"])
                .arg(plugin("testkit"))
                .args(["--listen", "0.0.0.0:0", "--data-dir"])
                .arg(&data),
        ),
    ] {
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a loopback address") && err.contains("token_file"),
            "{err}"
        );
    }
}

#[test]
fn api_token_file_makes_requests_without_the_token_401() {
    let tmp = tempfile::tempdir().unwrap();
    let token = write_file(tmp.path(), "token", "s3cret\n");
    let api = format!(
        r#"{{ listen = "0.0.0.0:0", token_file = {} }}"#,
        quoted(token.display())
    );
    let cfg = HostToml::new(&tmp.path().join("data"))
        .raw("api", &api)
        .write(tmp.path().join("host.toml"));
    let host = Listening::start(host().arg("serve").arg("--config").arg(&cfg));
    let a = host.addr.as_str();
    let (status, body) = http(a, "GET", "/v1/queues", &[], b"");
    assert_eq!(status, 401, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    let (status, _) = http(
        a,
        "GET",
        "/v1/queues",
        &[("Authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(status, 401);
    let (status, body) = http(
        a,
        "GET",
        "/v1/queues",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        a,
        "POST",
        "/v1/queues/q/tasks",
        &[],
        b"{\"payload\":\"x\"}\n",
    );
    assert_eq!(status, 401);
    // Probes stay open.
    assert_eq!(http(a, "GET", "/healthz", &[], b"").0, 200);
    host.stop();
}

#[test]
fn api_bad_input_gets_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = HostToml::new(&tmp.path().join("data"))
        .raw(
            "api",
            r#"{ listen = "127.0.0.1:0", max_body_bytes = 1000 }"#,
        )
        .write(tmp.path().join("host.toml"));
    let host = Listening::start(host().arg("serve").arg("--config").arg(&cfg));
    let a = host.addr.as_str();
    let error = |status: u16, body: &str, want_status: u16, needle: &str| {
        assert_eq!(status, want_status, "{body}");
        let e = json(body)["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    };
    let lines: &[u8] = b"{\"payload\":\"ok\"}\n{\"payload_base64\":\"%%%\"}\n";
    let (s, b) = http(a, "POST", "/v1/queues/q/tasks", &[], lines);
    error(s, &b, 400, "line 2");
    assert_eq!(json(&b)["committed"], 0);
    let json_type = [("Content-Type", "application/json")];
    let batch: &[u8] = br#"{"tasks":[{"payload":"a"},{"payload":1}]}"#;
    let one: &[u8] = b"{\"payload\":\"x\"}\n";
    let big = format!("{{\"payload\":\"{}\"}}\n", "x".repeat(2_000));
    /// Method, path, headers, body; the status and what the error names.
    type Refused<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [u8],
        u16,
        &'a str,
    );
    let refused: [Refused; 5] = [
        (
            "POST",
            "/v1/queues/q/tasks",
            &json_type,
            batch,
            400,
            "tasks[1]",
        ),
        (
            "POST",
            "/v1/queues/bad%01name/tasks",
            &[],
            one,
            400,
            "queue name",
        ),
        (
            "POST",
            "/v1/queues/q/tasks",
            &[],
            big.as_bytes(),
            413,
            "max_body_bytes",
        ),
        ("GET", "/v1/queues?limit=0", &[], b"", 400, "limit"),
        ("GET", "/v1/nothing-here", &[], b"", 404, "no route"),
    ];
    for (method, path, headers, body, status, names) in refused {
        let (s, b) = http(a, method, path, headers, body);
        error(s, &b, status, names);
    }
    // Nothing above was stored.
    let queues = get_json(a, "/v1/queues");
    assert_eq!(queues["queues"], serde_json::json!([]), "{queues}");
    // The document and the probes.
    let (s, b) = http(a, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(s, 200);
    assert!(
        json(&b)["paths"]["/v1/queues/{queue}/tasks"].is_object(),
        "{b:.200}"
    );
    assert_eq!(http(a, "GET", "/readyz", &[], b"").0, 200);
    host.stop();
}

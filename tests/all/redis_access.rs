//! Reaching Redis the way managed offerings require: over TLS (`rediss://`)
//! with a private CA, and as an ACL user limited to taskhost's keys.

use std::path::Path;

use crate::support::*;
use taskhost_fixtures::redis::RedisServer;

/// A host config file for `url`, trusting `ca_file` if given.
fn config(dir: &Path, url: &str, ca_file: Option<&Path>) -> std::path::PathBuf {
    // The data dir holds the compiled-code cache: one per test.
    let mut text = format!(
        "backend = \"redis\"\nqueue_url = \"{url}\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    if let Some(ca) = ca_file {
        text.push_str(&format!("\n[redis]\nca_file = \"{}\"\n", ca.display()));
    }
    let path = dir.join("host.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Pushes 1,000 tasks, drains them with the testkit plugin and checks the
/// queue is empty, all through `config`.
fn push_and_drain(tmp: &Path, config: &Path) {
    let payloads = payload_file(tmp, 1_000);
    let pushed = ok(host()
        .args(["push", "default", "--config"])
        .arg(config)
        .arg("--file")
        .arg(&payloads));
    assert!(pushed.contains("pushed 1000 tasks"), "{pushed}");
    let summary = ok(host()
        .args(["run", "--plugin"])
        .arg(plugin("testkit"))
        .args(["--set", "mode=noop", "--exit-when-drained", "--config"])
        .arg(config));
    assert!(summary.contains("1000 done"), "{summary}");
    let json = ok(host().args(["status", "--json", "--config"]).arg(config));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["pending"], 0, "{json}");
    assert_eq!(v[0]["dead"], 0, "{json}");
}

#[test]
fn rediss_with_a_private_ca_pushes_and_drains() {
    let server = RedisServer::start_tls().unwrap();
    let url = server.tls_url().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    push_and_drain(
        tmp.path(),
        &config(tmp.path(), &url, Some(&server.ca_file())),
    );
}

#[test]
fn rediss_without_the_ca_names_the_certificate_problem() {
    let server = RedisServer::start_tls().unwrap();
    let url = server.tls_url().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = output(
        host()
            .args(["status", "--config"])
            .arg(config(tmp.path(), &url, None)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A CA file on a plain URL, and a CA file that is not one, are refused up front.
    let plain = config(tmp.path(), &server.url(), Some(&server.ca_file()));
    let out = output(host().args(["status", "--config"]).arg(&plain));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not rediss://"), "{err}");
    let bogus = tmp.path().join("bogus.pem");
    std::fs::write(&bogus, "hello").unwrap();
    let out = output(host().args(["status", "--config"]).arg(config(
        tmp.path(),
        &url,
        Some(&bogus),
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus.pem") && err.contains("BEGIN CERTIFICATE"),
        "{err}"
    );
}

/// The ACL the README documents for a taskhost user.
const ACL: &[&str] = &[
    "resetkeys",
    "~taskhost:*",
    "resetchannels",
    "&taskhost:*",
    "-@all",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@scripting",
    "+@pubsub",
    "+@connection",
    "-@dangerous",
];

#[test]
fn an_acl_user_limited_to_taskhost_keys_runs_everything() {
    let server = RedisServer::start().unwrap();
    let mut args = vec!["ACL", "SETUSER", "worker", "on", ">s3cret"];
    args.extend_from_slice(ACL);
    let reply = server.command(&args).unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!("redis://worker:s3cret@127.0.0.1:{}/0", server.port());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &url, None);
    push_and_drain(tmp.path(), &cfg);
    // Operator commands too.
    ok(host().args(["pause", "default", "--config"]).arg(&cfg));
    ok(host().args(["resume", "default", "--config"]).arg(&cfg));
    ok(host()
        .args(["dead", "retry", "default", "--config"])
        .arg(&cfg));
    ok(host().args(["hosts", "--config"]).arg(&cfg));

    // A user without rights on taskhost's keys is told so.
    let reply = server
        .command(&["ACL", "SETUSER", "other", "on", ">pw", "~other:*", "+@all"])
        .unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!("redis://other:pw@127.0.0.1:{}/0", server.port());
    let dir = tmp.path().join("other");
    std::fs::create_dir(&dir).unwrap();
    let out = output(
        host()
            .args(["push", "default", "x", "--config"])
            .arg(config(&dir, &url, None)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.to_lowercase().contains("noperm"),
        "{err}"
    );
}

//! End to end: the real `host` binary with the real `archive` component.

use std::time::Duration;

use crate::support::*;

// The 10,000-task run of each archiver (Rust, Python, JavaScript) is the
// language matrix in tests/all/languages.rs.

#[test]
fn host_killed_mid_run_loses_nothing_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let archive = tmp.path().join("archive");
    let config = HostToml::new(&data)
        .plugin(&plugin("archive"))
        .dir(&archive, "/archive")
        .raw(
            "pool",
            r#"{ batch_size = 20, max_workers = 2, lease_ttl = "1s" }"#,
        )
        .write(tmp.path().join("host.toml"));
    let payloads = payload_file(tmp.path(), 10_000);
    ok(host()
        .args(["push", "default", "--config"])
        .arg(&config)
        .arg("--file")
        .arg(&payloads));

    let mut child = host()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .spawn()
        .unwrap();
    wait_until("the first archive files", Duration::from_secs(120), || {
        archive_files(&archive) >= 20
    });
    child.kill().unwrap(); // SIGKILL: no chance to return leases
    child.wait().unwrap();
    let before = archived(&archive).len();
    assert!(before < 10_000, "killed before the end ({before} archived)");

    let summary = run_until_drained(&config);
    let counts = archived(&archive);
    let missing: Vec<_> = (0..10_000)
        .filter(|i| !counts.contains_key(&format!("task-{i}")))
        .collect();
    assert_none_lost(&missing, &summary);
    let dups = counts.values().filter(|&&n| n > 1).count();
    // At-least-once: only tasks leased by the killed host may repeat.
    assert!(
        dups <= 2 * 20,
        "{dups} duplicates, more than the killed host held"
    );
}

#[test]
fn push_collapses_pending_unique_keys_and_status_shows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let lines = tmp.path().join("keyed.tsv");
    std::fs::write(&lines, "a\tone\nb\ttwo\na\tthree\n").unwrap();
    let out = ok(host()
        .args(["push", "q", "--keyed", "--data-dir"])
        .arg(&data)
        .arg("--file")
        .arg(&lines));
    assert!(
        out.contains("pushed 2 tasks") && out.contains("1 duplicates"),
        "{out}"
    );
    let out = ok(host()
        .args(["push", "q", "later", "--delay", "1h", "--data-dir"])
        .arg(&data));
    assert!(out.contains("pushed 1 tasks"), "{out}");
    let json = ok(host()
        .args(["status", "--json", "--queue", "q", "--data-dir"])
        .arg(&data));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["pending"], 2);
    assert_eq!(v[0]["delayed"], 1);
}

fn run_fails_with(args: &[&str], plugin_path: &std::path::Path, expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = output(
        host()
            .arg("run")
            .arg("--plugin")
            .arg(plugin_path)
            .arg("--data-dir")
            .arg(tmp.path())
            .args(args),
    );
    assert!(
        !out.status.success(),
        "host accepted {}",
        plugin_path.display()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for e in expect {
        assert!(err.contains(e), "stderr lacks {e:?}: {err}");
    }
}

#[test]
fn broken_wasm_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = std::fs::read(plugin("archive")).unwrap();
    let broken: [(&str, &[u8], &[&str]); 3] = [
        (
            "junk.wasm",
            b"this is not wasm at all",
            &["not a WebAssembly component", "magic"],
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            &["core WebAssembly module", "host componentize"],
        ),
        (
            "truncated.wasm",
            &archive[..archive.len() / 2],
            &["failed to compile"],
        ),
    ];
    for (name, bytes, says) in broken {
        let path = write_file(tmp.path(), name, bytes);
        let mut expect = vec![name];
        expect.extend(says);
        run_fails_with(&[], &path, &expect);
    }

    let missing = tmp.path().join("missing.wasm");
    run_fails_with(&[], &missing, &["missing.wasm", "cannot read plugin"]);
}

#[test]
fn wrong_world_component_is_refused() {
    run_fails_with(
        &[],
        &plugin("wrong-world"),
        &[
            "wrong_world.wasm",
            "does not implement world taskhost:plugin/handler-plugin",
            "taskhost:plugin/handler",
        ],
    );
}

#[test]
fn bad_config_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = "[[plugins]]\npath = \"x.wasm\"\npool = { batch_size = \"many\" }\n";
    let config = write_file(tmp.path(), "bad.toml", bad);
    let out = output(host().arg("run").arg("--config").arg(&config));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("batch_size"),
        "{err}"
    );

    let out = output(
        host()
            .args(["run", "--plugin", "x.wasm", "--batch-size", "0"])
            .arg("--data-dir")
            .arg(tmp.path()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch_size must be at least 1"), "{err}");
}

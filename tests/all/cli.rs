//! What a user of the `host` command meets around the edges: logs written
//! to files and terminals, closed pipes, wrong paths, error text, and the
//! status a running host keeps current.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::langs::{self, Lang};
use crate::support::*;
use taskhost_fixtures::redis::RedisServer;

const LIMIT: Duration = Duration::from_secs(120);

/// Waits for `child` to exit by itself; kills it and panics after `LIMIT`.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(what, LIMIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// `host run` of the testkit component on the data dir `data`, queue `default`.
fn testkit_run(data: &Path, mode: &str) -> Command {
    let mut c = host();
    c.arg("run")
        .arg("--plugin")
        .arg(plugin("testkit"))
        .arg("--data-dir")
        .arg(data)
        .args(["--set", &format!("mode={mode}")]);
    c
}

fn status_json(data: &Path) -> serde_json::Value {
    let out = ok(host().args(["status", "--json", "--data-dir"]).arg(data));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "default").cloned())
        .unwrap_or_else(|| panic!("no queue default in {out}"))
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // stderr to a file: plain text, so `grep 'plugin=testkit'` finds it.
    let log = tmp.path().join("run.log");
    let out = output(
        testkit_run(&data, "noop")
            .env("TASKHOST_LOG", "info")
            .env_remove("NO_COLOR")
            .args(["--sample-tasks", "5", "--exit-when-drained"])
            .stderr(Stdio::from(File::create(&log).unwrap())),
    );
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("plugin=testkit"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI codes in a log file: {text:?}");

    // On a terminal (script(1) gives the host a pseudo-terminal): coloured,
    // unless NO_COLOR is set.
    let on_terminal = |no_color: Option<&str>| {
        let cmd = format!(
            "{} run --plugin {} --data-dir {} --sample-tasks 1 --exit-when-drained",
            env!("CARGO_BIN_EXE_host"),
            plugin("testkit").display(),
            data.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("TASKHOST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = output(&mut c);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = on_terminal(None);
    assert!(
        tty.contains("plugin loaded") && tty.contains('\x1b'),
        "{tty:?}"
    );
    let plain = on_terminal(Some("1"));
    assert!(
        plain.contains("plugin loaded") && !plain.contains('\x1b'),
        "{plain:?}"
    );
}

#[test]
fn a_closed_stdout_and_stderr_neither_stop_nor_crash_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // `host run ... 2>&1 | head -1`: the reader is gone before the host
    // writes its first log line or its summary.
    let mut child = Running(
        testkit_run(&data, "noop")
            .env("TASKHOST_LOG", "debug")
            .args(["--sample-tasks", "2000", "--batch-size", "10"])
            .arg("--exit-when-drained")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(child.0.stdout.take());
    drop(child.0.stderr.take());
    let status = wait_exit(&mut child.0, "the host to drain and exit");
    assert!(status.success(), "host ended with {status}");
    let s = status_json(&data);
    assert_eq!(
        (s["pending"].as_u64(), s["leased"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );

    // The other commands too: `host status | head -0`.
    let mut child = Running(
        host()
            .args(["status", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(child.0.stdout.take());
    let status = wait_exit(&mut child.0, "host status to exit");
    assert!(status.success(), "host status ended with {status}");
}

#[test]
fn a_missing_dir_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("archvie"); // a typo
    let data = tmp.path().join("data");
    let out = output(&mut archive_run(&plugin("archive"), &data, &missing));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing --dir was accepted: {err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!missing.exists(), "the host created {}", missing.display());
}

#[test]
fn status_json_batch_counts_follow_a_running_host() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let payloads = payload_file(tmp.path(), 7);
    push_file(&data, &payloads);
    let mut child = Running(
        testkit_run(&data, "noop")
            .args(["--batch-size", "1"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let batches = |s: &serde_json::Value| -> u64 {
        s["hosts"]
            .as_array()
            .and_then(|h| h.first())
            .and_then(|h| h["batches_by_version"].as_object())
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
    };
    // Without being asked (no swap, no reload), the run file catches up
    // with the 7 batches the host ran.
    wait_until("status to show 7 batches", Duration::from_secs(30), || {
        batches(&status_json(&data)) == 7
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    assert!(wait_exit(&mut child.0, "the host to stop").success());
}

#[test]
fn errors_name_their_cause_once_and_bad_values_name_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.toml");
    let out = output(host().arg("status").arg("--config").arg(&missing));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let config = HostToml::new(&tmp.path().join("data"))
        .plugin(&plugin("testkit"))
        .raw("pool", "{ batch_size = 0 }")
        .write(tmp.path().join("host.toml"));
    let out = output(host().arg("run").arg("--config").arg(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("config file {}", config.display()))
            && err.contains("plugins[0] (testkit): pool.batch_size must be at least 1"),
        "{err}"
    );
    // The same value from the command line blames no file.
    let out = output(testkit_run(&tmp.path().join("data"), "noop").args(["--batch-size", "0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("pool.batch_size must be at least 1")
            && !err.contains("config file"),
        "{err}"
    );
}

#[test]
fn a_dead_letter_reason_leads_with_the_cause_then_the_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    push_to_disk(&data, &["trap"]);
    ok(testkit_run(&data, "script").args(["--max-attempts", "1", "--exit-when-drained"]));
    let out = ok(host()
        .args(["status", "--json", "--dead", "1", "--data-dir"])
        .arg(&data));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reason = v[0]["dead_letters"][0]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no dead letter: {out}"));
    let cause = reason.find("unreachable").expect("the trap is named");
    let stderr = reason.find("panicked").expect("the guest's stderr is kept");
    let trace = reason
        .find("wasm backtrace")
        .expect("the backtrace is kept");
    assert!(cause < stderr && stderr < trace, "{reason}");
}

langs::every_language!(archive_removes_what_an_unfinished_attempt_left);

fn archive_removes_what_an_unfinished_attempt_left(lang: Lang) {
    if crate::support::langs::skip(lang) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let archive = tmp.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    push_to_disk(&data, &["one"]);
    // A host leases task 1 (attempt 1) and is killed mid-call, as if it had
    // been writing the batch's temporary file, which it leaves behind.
    let config = HostToml::new(&data)
        .plugin(&plugin("testkit"))
        .raw("config", r#"{ mode = "loop" }"#)
        .raw("pool", r#"{ lease_ttl = "200ms" }"#)
        .write(tmp.path().join("loop.toml"));
    let mut looping = Running(
        host()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    wait_until("task 1 leased", LIMIT, || {
        status_json(&data)["leased"].as_u64() == Some(1)
    });
    looping.0.kill().unwrap();
    looping.0.wait().unwrap();
    let orphan = archive.join(format!(".{:020}-{:020}-1-0123456789abcdef.jsonl.tmp", 1, 1));
    std::fs::write(&orphan, "{\"id\":1").unwrap();
    // A live call's file (another task, current attempt) and a file that is
    // not the plugin's are left alone.
    let live = archive.join(format!(".{:020}-{:020}-1-fedcba9876543210.jsonl.tmp", 9, 9));
    std::fs::write(&live, "").unwrap();
    let other = archive.join(".notes.tmp");
    std::fs::write(&other, "").unwrap();

    let summary = ok(&mut archive_run(&langs::archive(lang), &data, &archive));
    assert!(summary.contains("1 done"), "{summary}");
    assert_eq!(archived(&archive).get("one"), Some(&1));
    assert!(
        !orphan.exists(),
        "the orphaned temporary file is still there"
    );
    assert!(live.exists() && other.exists());
}

#[test]
fn redis_coming_back_is_logged_once_with_the_outage_length() {
    let mut redis = RedisServer::start().unwrap();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run.log");
    let mut child = Running(
        host()
            .env("TASKHOST_LOG", "info")
            .arg("run")
            .arg("--plugin")
            .arg(plugin("testkit"))
            .args(["--queue-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the host serving", LIMIT, || read().contains("serving"));
    redis.kill();
    // The idle host keeps polling: its polls fail while Redis is gone.
    wait_until("the outage logged", LIMIT, || {
        read().contains("unreachable")
    });
    redis.restart().unwrap();
    let back = std::time::Instant::now() + LIMIT;
    while !read().contains("Redis reachable again after") {
        assert!(
            std::time::Instant::now() < back,
            "the return was not logged within {LIMIT:?}; the host's log:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Work flows again, and the return was logged once.
    ok(host().args(["push", "default", "x", "--queue-url", &url]));
    wait_until("the task done", LIMIT, || {
        let out = ok(host().args(["status", "--json", "--queue-url", &url]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["pending"] == 0 && v[0]["leased"] == 0
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    assert!(wait_exit(&mut child.0, "the host to stop").success());
    let text = read();
    assert_eq!(
        text.matches("Redis reachable again after").count(),
        1,
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("reachable again"))
        .unwrap();
    assert!(line.contains(" s") && line.contains(&url), "{line}");
}

#[test]
fn host_wit_prints_and_writes_the_plugin_interface() {
    let wit = std::fs::read_to_string(root().join("wit/plugin.wit")).unwrap();
    let printed = ok(host().arg("wit"));
    assert_eq!(printed.trim_end(), wit.trim_end());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("wit");
    ok(host().args(["wit", "--out"]).arg(&out));
    assert_eq!(
        std::fs::read_to_string(out.join("plugin.wit")).unwrap(),
        wit
    );
}

#[test]
fn host_componentize_names_the_file_and_what_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
    let command = write_file(tmp.path(), "command.wasm", module);
    let out = output(
        host()
            .arg("componentize")
            .arg(&command)
            .arg("-o")
            .arg(tmp.path().join("plugin.wasm")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&command.display().to_string())
            && err.contains("-mexec-model=reactor"),
        "{err}"
    );
    assert!(!tmp.path().join("plugin.wasm").exists());

    let empty = tmp.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(module)").unwrap()).unwrap();
    let out = output(
        host()
            .args(["componentize", "--world", "source-plugin", "-o"])
            .arg(tmp.path().join("plugin.wasm"))
            .arg(&empty),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("taskhost:plugin/source@0.1.0#poll"),
        "the missing export is named: {err}"
    );
}

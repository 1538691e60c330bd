//! A disk store that is lost, damaged or unwritable: refused with the cause,
//! never served as if it were fine (issue 15 part 2).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A disk store in `tmp/data` holding `n` pushed tasks: the data directory
/// and its database file.
fn store_with(tmp: &Path, n: usize) -> (PathBuf, PathBuf) {
    let data = tmp.join("data");
    push_file(&data, &payload_file(tmp, n));
    let db = data.join("queue.sqlite3");
    (data, db)
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_drained(data: &Path) -> Output {
    output(
        host()
            .arg("run")
            .arg("--plugin")
            .arg(plugin("testkit"))
            .arg("--data-dir")
            .arg(data)
            .arg("--exit-when-drained"),
    )
}

/// `host run`, `host push` and `host <third>` all fail naming the database
/// and saying each of `says`; none reports counts as if the store were fine.
fn assert_all_refused(data: &Path, third: &str, says: &[&str]) {
    let db = data.join("queue.sqlite3").display().to_string();
    let push = output(
        host()
            .args(["push", "default", "x", "--data-dir"])
            .arg(data),
    );
    let other = output(host().args([third, "--data-dir"]).arg(data));
    for out in [run_drained(data), push, other] {
        let e = fails(&out);
        assert!(e.contains(&db), "{e}");
        for s in says {
            assert!(e.contains(s), "{s:?} not in: {e}");
        }
        assert!(!String::from_utf8_lossy(&out.stdout).contains("0 pending"));
    }
}

#[test]
fn a_truncated_store_is_refused_and_init_force_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, db) = store_with(tmp.path(), 200);
    std::fs::File::create(&db).unwrap(); // 0 bytes: SQLite would take it for a new, empty queue
    assert_all_refused(&data, "status", &["empty (0 bytes)", "host init --force"]);
    let moved = ok(host().args(["init", "--force", "--data-dir"]).arg(&data));
    assert!(moved.contains("moved aside"), "{moved}");
    let summary = String::from_utf8_lossy(&run_drained(&data).stdout).into_owned();
    assert!(summary.contains("0 done"), "{summary}");
}

#[test]
fn a_damaged_store_stops_run_push_and_fails_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, db) = store_with(tmp.path(), 20_000);
    ok(host().args(["check", "--data-dir"]).arg(&data));
    // Garbage over pages in the middle of the file.
    let len = std::fs::metadata(&db).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
    f.write_all(&[0xA5; 3 * 4096]).unwrap();
    drop(f);
    assert_all_refused(&data, "check", &["damaged"]);
}

#[test]
fn a_read_only_data_dir_is_called_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, db) = store_with(tmp.path(), 3);
    let mut cmd = host();
    // Root writes anywhere: run the host as nobody over a directory it may
    // read but not write.
    let root = running_as_root();
    if root {
        use std::os::unix::fs::PermissionsExt;
        for d in [tmp.path(), &data] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_host"))
            .env("TASKHOST_LOG", "warn");
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let e = fails(&output(
        cmd.args(["push", "default", "x", "--data-dir"]).arg(&data),
    ));
    assert!(
        e.contains("is read-only") && e.contains(&data.display().to_string()),
        "{e}"
    );
}

/// Whether this test runs as root (the only user permissions do not stop).
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[test]
fn damage_found_while_serving_stops_host_run_with_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, db) = store_with(tmp.path(), 1);
    let log = tmp.path().join("run.log");
    let mut child = host()
        .env("TASKHOST_LOG", "info")
        .arg("run")
        .arg("--plugin")
        .arg(plugin("testkit"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the host serving", LIMIT, || read().contains("serving"));
    // Damage the schema from outside; the host's next statement rereads it.
    taskhost_fixtures::sqlite::damage_schema(&db);
    let mut status = None;
    wait_until("the host to stop by itself", LIMIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    let text = read();
    assert!(
        text.contains("queue store failed") && text.contains("malformed"),
        "{text}"
    );
    assert!(text.contains(&db.display().to_string()), "{text}");
}

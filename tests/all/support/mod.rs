//! Shared helpers of the end-to-end tests: real components built from the
//! workspace, the real `host` binary, and archive readers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace")
        .to_owned()
}

/// Builds the guest plugins once per test binary (cargo serialises
/// concurrent builds on its own lock) and returns the component's path.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let root = root();
            let target = root.join("target").join("wasm");
            let out = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "build",
                    "--profile",
                    "plugin",
                    "--target",
                    "wasm32-wasip2",
                    "--target-dir",
                ])
                .arg(&target)
                .args(["-p", "archive", "-p", "testkit", "-p", "wrong-world"])
                .args([
                    "-p",
                    "status-refresh",
                    "-p",
                    "log-report",
                    "-p",
                    "http-source",
                ])
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the plugins failed (is the wasm32-wasip2 target installed?):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target.join("wasm32-wasip2").join("plugin"))
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `host` binary under test.
pub fn host() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host"));
    c.env("TASKHOST_LOG", "warn");
    c
}

/// A spawned `host`, killed when dropped (a failed assertion included).
pub struct Running(pub Child);

impl Running {
    /// `host run --config CONFIG`, its stdout discarded.
    pub fn with_config(config: &Path) -> Self {
        let child = host()
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawning host run");
        Self(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion, returning its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("spawning host")
}

/// Writes `contents` to the file `name` in `dir`; answers its path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// `host push default PAYLOADS --data-dir DATA`, asserting success.
pub fn push_to_disk(data: &Path, payloads: &[&str]) -> String {
    ok(host()
        .args(["push", "default"])
        .args(payloads)
        .arg("--data-dir")
        .arg(data))
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes the lines of `file` to queue `default` of the disk store in
/// `data`; returns what `host push` printed.
pub fn push_file(data: &Path, file: &Path) -> String {
    ok(host()
        .args(["push", "default", "--file"])
        .arg(file)
        .arg("--data-dir")
        .arg(data))
}

/// `host run` of the archive component at `plugin` on the disk store in
/// `data`, granted `archive` as `/archive`, until the queue is drained.
pub fn archive_run(plugin: &Path, data: &Path, archive: &Path) -> Command {
    let mut cmd = host();
    cmd.arg("run")
        .arg("--plugin")
        .arg(plugin)
        .arg("--data-dir")
        .arg(data)
        .arg("--dir")
        .arg(format!("{}:/archive", archive.display()))
        .arg("--exit-when-drained");
    cmd
}

/// Runs `host run --config CONFIG` until its queues are drained; returns
/// its standard output.
pub fn run_until_drained(config: &Path) -> String {
    ok(host()
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--exit-when-drained"))
}

/// Fails unless no task is `missing`, naming how many are and the first
/// few; `context` (a summary, logs) follows.
pub fn assert_none_lost<T: std::fmt::Debug>(missing: &[T], context: &str) {
    assert!(
        missing.is_empty(),
        "lost {} tasks, e.g. {:?}\n{context}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Writes `n` payloads `task-<i>` one per line; returns the file.
pub fn payload_file(dir: &Path, n: usize) -> PathBuf {
    payload_range_file(dir, 0..n)
}

/// Writes the payloads `task-<i>` for each `i` of `range`, one per line;
/// returns the file (named by the range, so several can coexist).
pub fn payload_range_file(dir: &Path, range: std::ops::Range<usize>) -> PathBuf {
    let name = if range.start == 0 {
        "payloads.txt".to_owned()
    } else {
        format!("payloads-{}-{}.txt", range.start, range.end)
    };
    let path = dir.join(name);
    let text: String = range.map(|i| format!("task-{i}\n")).collect();
    std::fs::write(&path, text).expect("writing payloads");
    path
}

/// Counts archived records per payload across every archive file.
pub fn archived(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counts;
    };
    for e in entries {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("reading archive file");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("bad archive line in {name}: {err}: {line}"));
            let payload = v["payload"].as_str().expect("text payload").to_owned();
            *counts.entry(payload).or_default() += 1;
        }
    }
    counts
}

/// Number of finished archive files in `dir`.
pub fn archive_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `cond` holds, checking every few milliseconds; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A store of memory queues on the system clock.
pub fn memory_store() -> std::sync::Arc<dyn taskhost::queue::QueueStore> {
    use taskhost::queue::memory::{MemoryOptions, MemoryStore};
    std::sync::Arc::new(MemoryStore::new(
        MemoryOptions::default(),
        taskhost::clock::system(),
    ))
}

/// A plugin runtime caching compiled code in `cache`.
pub fn cached_runtime(
    cache: &Path,
) -> Result<taskhost::plugin::Runtime, taskhost::plugin::PluginError> {
    taskhost::plugin::Runtime::with_options(taskhost::plugin::RuntimeOptions {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })
}

pub mod host_toml;
pub mod langs;

pub use host_toml::{HostToml, quoted};

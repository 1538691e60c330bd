//! taskhost plugin that archives tasks to JSON Lines files.
//!
//! Configuration: `dir`, the guest path of a directory the host preopens for
//! the plugin (default `/archive`; an empty value means the default).
//!
//! Each non-empty batch becomes ONE file
//! `<dir>/<first id:020>-<last id:020>-<attempt of first task>-<16 hex random>.jsonl`
//! with one JSON object per task, in batch order:
//!
//! ```text
//! {"id":7,"queue":"mail","unique_key":null,"attempt":1,"enqueued_at_ms":1764000000000,"payload":"hello"}
//! ```
//!
//! A payload that is not valid UTF-8 is written as `"payload_base64"`
//! (standard alphabet, padded) instead of `"payload"`.
//!
//! The file is first written as `<dir>/.<name>.tmp`, synced, then renamed to
//! its final name, and the directory synced, so a reader never sees a partial
//! file and a task is reported `done` only once its record is on disk. On any
//! I/O error the plugin logs the path and error through the host and answers
//! `retry` for every task of the batch, removing its temporary file.
//!
//! A call that never finished (the host was killed, the call trapped or ran
//! out of time) leaves its temporary file behind, and its tasks come back
//! with a higher `attempt`. A batch holding such a redelivered task first
//! removes the temporary files of that task's earlier attempts: the name
//! carries the first task's id and attempt, and a task is leased to one call
//! at a time, so no live call can still be writing them. (A plugin instance
//! lives for one call only, so "at start" has no meaning inside it; a file
//! of another live call is never touched, since its attempt is current.)

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use taskhost_guest::{Handler, Outcome, Task, export_handler};

/// Directory used when the configuration has no `dir`.
const DEFAULT_DIR: &str = "/archive";

/// How many random names are tried before giving up on finding a free one.
const NAME_ATTEMPTS: usize = 8;

/// The plugin type exported as the component's handler.
struct Archive;

impl Handler for Archive {
    fn handle(batch: Vec<Task>) -> Vec<Outcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let dir = match taskhost_guest::config("dir") {
            Some(dir) if !dir.is_empty() => dir,
            _ => DEFAULT_DIR.to_owned(),
        };
        if batch.iter().any(|t| t.attempt > 1) {
            remove_orphans(Path::new(&dir), &batch);
        }
        let outcome = match write_batch(Path::new(&dir), &batch) {
            Ok(path) => {
                // The file's data is synced before the rename; syncing the
                // directory makes the rename durable too. If the host does not
                // allow it, answering `retry` would only archive the batch again
                // in a second file, so warn and go on.
                if let Err(err) = sync_dir(Path::new(&dir)) {
                    taskhost_guest::warn(&format!("archive: {err}"));
                }
                taskhost_guest::debug(&format!(
                    "archive: wrote {} task(s) to {}",
                    batch.len(),
                    path.display()
                ));
                Outcome::Done
            }
            Err(err) => {
                taskhost_guest::error(&format!("archive: {err}"));
                Outcome::Retry(None)
            }
        };
        batch.iter().map(|_| outcome.clone()).collect()
    }
}

export_handler!(Archive);

/// An I/O error together with what was being done and to which path.
#[derive(Debug)]
struct ArchiveError {
    /// What was being done, e.g. "create" or "sync".
    action: &'static str,
    /// The path concerned (for a rename: "from -> to").
    path: String,
    /// The underlying error.
    source: io::Error,
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot {} {}: {}", self.action, self.path, self.source)
    }
}

/// Builds a closure that wraps an `io::Error` with an action and a path.
fn failed(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    move |source| ArchiveError {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Writes the whole batch to one new file in `dir` and answers its path.
fn write_batch(dir: &Path, batch: &[Task]) -> Result<PathBuf, ArchiveError> {
    let (first, last) = match (batch.first(), batch.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => unreachable!("write_batch is never called with an empty batch"),
    };
    let mut body = String::new();
    for task in batch {
        write_record(&mut body, task);
    }

    let (final_path, tmp_path, mut file) = create_temp(dir, first, last)?;
    let written = file
        .write_all(body.as_bytes())
        .map_err(failed("write", &tmp_path))
        .and_then(|()| file.sync_all().map_err(failed("sync", &tmp_path)));
    drop(file);
    let renamed = written.and_then(|()| {
        fs::rename(&tmp_path, &final_path).map_err(|source| ArchiveError {
            action: "rename",
            path: format!("{} -> {}", tmp_path.display(), final_path.display()),
            source,
        })
    });
    if let Err(err) = renamed {
        // Best effort: the original error is what matters.
        let _ = fs::remove_file(&tmp_path);
        return Err(err);
    }
    Ok(final_path)
}

/// Removes the temporary files that earlier, unfinished attempts of this
/// batch's tasks left in `dir`. Best effort: a file that stays is only clutter.
fn remove_orphans(dir: &Path, batch: &[Task]) {
    let attempts: std::collections::HashMap<u64, u32> =
        batch.iter().map(|t| (t.id, t.attempt)).collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((first, attempt)) = name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if attempts.get(&first).is_some_and(|&now| attempt < now) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => taskhost_guest::info(&format!(
                    "archive: removed {} left by an unfinished attempt",
                    path.display()
                )),
                Err(err) => {
                    taskhost_guest::warn(&format!("archive: {}", failed("remove", &path)(err)))
                }
            }
        }
    }
}

/// The first task's id and attempt in a temporary file's name
/// (`.<first>-<last>-<attempt>-<random>.jsonl.tmp`), or `None` for any other name.
fn parse_temp_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_prefix('.')?.strip_suffix(".jsonl.tmp")?;
    let mut parts = stem.split('-');
    let first = parts.next()?.parse().ok()?;
    let _last: u64 = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    let random = parts.next()?;
    (random.len() == 16 && parts.next().is_none()).then_some((first, attempt))
}

/// Syncs directory `dir`, so that a rename done in it is durable.
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed("sync directory", dir))
}

/// Creates a new, empty hidden temporary file for the batch under a fresh random name.
///
/// Answers the final path, the temporary path and the open file. A name whose
/// final or temporary file already exists is never reused.
fn create_temp(
    dir: &Path,
    first: &Task,
    last: &Task,
) -> Result<(PathBuf, PathBuf, File), ArchiveError> {
    let mut last_err = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = file_name(first.id, last.id, first.attempt, random_u64());
        let final_path = dir.join(&name);
        let tmp_path = dir.join(format!(".{name}.tmp"));
        match fs::symlink_metadata(&final_path) {
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(failed("inspect", &final_path)(err)),
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((final_path, tmp_path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                last_err = Some(failed("create", &tmp_path)(err));
            }
            Err(err) => return Err(failed("create", &tmp_path)(err)),
        }
    }
    Err(last_err.unwrap_or_else(|| ArchiveError {
        action: "find a free file name in",
        path: dir.display().to_string(),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    }))
}

/// Name of the archive file of a batch: `<first:020>-<last:020>-<attempt>-<random:016x>.jsonl`.
fn file_name(first_id: u64, last_id: u64, attempt: u32, random: u64) -> String {
    format!("{first_id:020}-{last_id:020}-{attempt}-{random:016x}.jsonl")
}

/// A random 64-bit value, without an extra crate.
///
/// `RandomState` draws its keys from WASI's random source once per instance
/// and changes them on every call; a counter and the clock are mixed in too.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

/// Appends the JSON line (with its trailing newline) of one task to `out`.
///
/// Fields, in this order: `id`, `queue`, `unique_key` (string or null),
/// `attempt`, `enqueued_at_ms`, then `payload` (UTF-8 text) or, for a payload
/// that is not valid UTF-8, `payload_base64` (standard base64).
fn write_record(out: &mut String, task: &Task) {
    out.push_str("{\"id\":");
    let _ = write!(out, "{}", task.id);
    out.push_str(",\"queue\":");
    push_json_string(out, &task.queue);
    out.push_str(",\"unique_key\":");
    match &task.unique_key {
        Some(key) => push_json_string(out, key),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"attempt\":{},\"enqueued_at_ms\":{}",
        task.attempt, task.enqueued_at_ms
    );
    match std::str::from_utf8(&task.payload) {
        Ok(text) => {
            out.push_str(",\"payload\":");
            push_json_string(out, text);
        }
        Err(_) => {
            out.push_str(",\"payload_base64\":\"");
            BASE64.encode_string(&task.payload, out);
            out.push('"');
        }
    }
    out.push_str("}\n");
}

/// Appends `s` to `out` as a JSON string literal, escaped by serde_json.
fn push_json_string(out: &mut String, s: &str) {
    // Serialising a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, unique_key: Option<&str>, payload: &[u8]) -> Task {
        Task {
            id,
            queue: "mail".to_owned(),
            unique_key: unique_key.map(str::to_owned),
            payload: payload.to_vec(),
            attempt: 3,
            enqueued_at_ms: 1_764_000_000_123,
        }
    }

    #[test]
    fn temporary_names_give_the_first_task_and_its_attempt() {
        let name = format!(".{}.tmp", file_name(7, 9, 2, 0xabc));
        assert_eq!(parse_temp_name(&name), Some((7, 2)));
        assert_eq!(parse_temp_name(&file_name(7, 9, 2, 0xabc)), None);
        assert_eq!(parse_temp_name(".notes.jsonl.tmp"), None);
        assert_eq!(parse_temp_name(".1-2-3.jsonl.tmp"), None);
    }

    fn record(task: &Task) -> String {
        let mut out = String::new();
        write_record(&mut out, task);
        out
    }

    #[test]
    fn utf8_payload_without_key() {
        assert_eq!(
            record(&task(7, None, b"hello")),
            "{\"id\":7,\"queue\":\"mail\",\"unique_key\":null,\"attempt\":3,\
             \"enqueued_at_ms\":1764000000123,\"payload\":\"hello\"}\n"
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut t = task(u64::MAX, Some("k\"1"), "line1\nline2 \u{1} é ✓".as_bytes());
        t.queue = "q\\x".to_owned();
        let line = record(&t);
        assert_eq!(
            line,
            "{\"id\":18446744073709551615,\"queue\":\"q\\\\x\",\"unique_key\":\"k\\\"1\",\
             \"attempt\":3,\"enqueued_at_ms\":1764000000123,\
             \"payload\":\"line1\\nline2 \\u0001 é ✓\"}\n"
        );
        // And it parses back to the original values.
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payload"], "line1\nline2 \u{1} é ✓");
        assert_eq!(v["unique_key"], "k\"1");
        assert_eq!(v["queue"], "q\\x");
    }

    #[test]
    fn binary_payload_is_base64() {
        assert_eq!(
            record(&task(1, Some("k"), &[0xff, 0x00, 0x41, 0x80])),
            "{\"id\":1,\"queue\":\"mail\",\"unique_key\":\"k\",\"attempt\":3,\
             \"enqueued_at_ms\":1764000000123,\"payload_base64\":\"/wBBgA==\"}\n"
        );
    }

    #[test]
    fn empty_payload_is_empty_text() {
        assert!(record(&task(2, None, b"")).ends_with(",\"payload\":\"\"}\n"));
    }

    #[test]
    fn file_names_sort_by_first_id() {
        assert_eq!(
            file_name(12, 345, 2, 0xabc),
            "00000000000000000012-00000000000000000345-2-0000000000000abc.jsonl"
        );
        assert!(file_name(9, 9, 1, 0) < file_name(10, 10, 1, 0));
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn batch_is_written_atomically_to_one_file() {
        let dir = std::env::temp_dir().join(format!("archive-test-{:016x}", random_u64()));
        fs::create_dir_all(&dir).unwrap();
        let batch = vec![task(5, None, b"a"), task(6, Some("u"), &[0xc3])];
        let path = write_batch(&dir, &batch).unwrap();
        sync_dir(&dir).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("00000000000000000005-00000000000000000006-3-"),
            "{name}"
        );
        let text = fs::read_to_string(&path).unwrap();
        let expected: String = batch.iter().map(record).collect();
        assert_eq!(text, expected);
        let second = write_batch(&dir, &batch).unwrap();
        assert_ne!(path, second);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 2, "no temporary file left: {entries:?}");
        assert!(entries.iter().all(|e| !e.starts_with('.')));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("archive-missing-{:016x}", random_u64()));
        let err = write_batch(&dir, &[task(1, None, b"x")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot create "), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }
}

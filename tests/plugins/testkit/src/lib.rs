//! Scriptable test plugin for the taskhost host's tests.
//!
//! Its behaviour is chosen by the configuration key `mode`, read once per
//! batch:
//!
//! | mode | behaviour |
//! |---|---|
//! | `noop` (default) | every task `done`, payloads not looked at (benchmarks) |
//! | `trap` | panics, so the whole batch traps |
//! | `loop` | loops forever |
//! | `script` | each payload is a command deciding that task's outcome (below) |
//! | `short` | answers one outcome fewer than tasks (`done` for each but the last) |
//! | `long` | answers one outcome more than tasks (all `done`) |
//! | `tag` | enqueues `PAYLOAD|TAG|VERSION` to the queue named by config `results` for each task, then `done`; `TAG` is compiled into the component (tests patch it to make a second version), `VERSION` is the host's `taskhost.version` |
//! | `chatty` | logs 4 MiB in 64 KiB lines per call, then every task `done` |
//! | `garbage` | calls every host import with out-of-spec values; `done` if the host refused each, `fail` naming the one it accepted |
//! | `grow` | grows memory without end (a memory bomb) |
//! | `journal` | every task `done` after `hold_ms` (config) milliseconds; appends one line per task to a new file in `journal_dir` (below) |
//! | `bulk` | each payload is `QUEUE:KEY:PAYLOAD` (empty KEY: none); the whole batch is enqueued with one `enqueue-many` call; `done` per accepted task, `fail(err)` per refused one |
//! | `flood` | per task, one `enqueue-many` of `flood_tasks` (config, default 1000) tasks of `flood_bytes` (default 1) bytes each to the queue named by config `results` (default: its own); `done`, or `fail` with the first refusal |
//! | anything else | logs an error, every task `fail("unknown mode: ...")` |
//!
//! Journal lines (mode `journal`), one file per batch named
//! `<host>-<first id>-<first attempt>.tsv` in the directory `journal_dir`, are
//! `host<TAB>unique key<TAB>id<TAB>attempt<TAB>start ms<TAB>end ms`, where
//! `host` is the config value `host` and start/end are wall-clock times taken
//! when the batch began and after the hold: the time the task was being
//! handled. Tests use them to check that no key was handled twice at once.
//!
//! Script commands (the payload as UTF-8 text, matched exactly):
//!
//! | command | outcome |
//! |---|---|
//! | `ok` | `done` |
//! | `retry-until:N` | `retry(none)` while `attempt < N`, then `done` |
//! | `retry-after:MS` | `retry(some(MS))` on attempt 1, then `done` |
//! | `fail:REASON` | `fail(REASON)` |
//! | `trap` | panics: the whole batch traps |
//! | `loop` | loops forever |
//! | `enqueue:QUEUE:PAYLOAD` | enqueues PAYLOAD on QUEUE (no key, no delay): `done`, or `fail(err)` if refused |
//! | `log:TEXT` | logs TEXT at info level, `done` |
//! | `alloc:BYTES` | allocates and touches BYTES of memory, `done` (traps past the memory limit) |
//! | `sleep:MS` | sleeps MS milliseconds in `wasi:clocks` (a host call), `done` |
//! | `get:URL` | GETs URL over `wasi:http` and reads the whole body: `done`, or `fail(err)` |
//! | anything else | `fail("unknown command: ...")` |

use std::hint::black_box;

use taskhost_guest::{Handler, NewTask, Outcome, Task, export_handler};

/// The plugin type exported as the component's handler.
struct Testkit;

impl Handler for Testkit {
    fn handle(batch: Vec<Task>) -> Vec<Outcome> {
        let mode = taskhost_guest::config("mode");
        match mode.as_deref().unwrap_or("noop") {
            "noop" => all_done(batch.len()),
            "trap" => panic!("testkit: mode trap"),
            "loop" => spin_forever(),
            "script" => batch.iter().map(run_command).collect(),
            "short" => all_done(batch.len().saturating_sub(1)),
            "long" => all_done(batch.len() + 1),
            "tag" => batch.iter().map(tag).collect(),
            "chatty" => {
                let line = "x".repeat(64 * 1024);
                for _ in 0..64 {
                    taskhost_guest::info(&line);
                }
                all_done(batch.len())
            }
            "garbage" => {
                let outcome = garbage();
                batch.iter().map(|_| outcome.clone()).collect()
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![7u8; 1 << 20]));
                }
            }
            "journal" => journal(&batch),
            "bulk" => bulk(&batch),
            "flood" => batch.iter().map(|_| flood()).collect(),
            other => {
                let reason = format!("unknown mode: {other}");
                taskhost_guest::error(&format!("testkit: {reason}"));
                batch
                    .iter()
                    .map(|_| Outcome::Fail(reason.clone()))
                    .collect()
            }
        }
    }
}

export_handler!(Testkit);

/// The version tag compiled into this component. Tests rewrite these bytes
/// in the `.wasm` file to make a second, distinct version of it.
static TAG: [u8; 12] = *b"TAG:AAAA0000";

/// Enqueues `PAYLOAD|TAG|VERSION` to the results queue.
fn tag(task: &Task) -> Outcome {
    // Read the tag from memory so the bytes stay a literal in the data segment.
    // SAFETY: reading a static byte array.
    let tag = unsafe { std::ptr::read_volatile(&TAG) };
    let version = taskhost_guest::config("taskhost.version").unwrap_or_default();
    let queue = taskhost_guest::config("results").unwrap_or_else(|| "results".into());
    let mut payload = task.payload.clone();
    payload.push(b'|');
    payload.extend_from_slice(&tag);
    payload.push(b'|');
    payload.extend_from_slice(version.as_bytes());
    let result = taskhost_guest::enqueue(NewTask {
        queue,
        payload,
        unique_key: None,
        delay_ms: None,
    });
    match result {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Fail(e),
    }
}

/// Calls host imports with values out of spec; the host must refuse each.
fn garbage() -> Outcome {
    let bad = |queue: &str, payload: Vec<u8>| NewTask {
        queue: queue.to_owned(),
        payload,
        unique_key: Some("k".repeat(1 << 16)),
        delay_ms: Some(u64::MAX),
    };
    let attempts = [
        (
            "control characters in the queue name",
            bad("bad\n\0queue", b"x".to_vec()),
        ),
        ("a 17 MiB payload", bad("", vec![0; 17 << 20])),
        (
            "a 300-byte queue name",
            bad(&"q".repeat(300), b"x".to_vec()),
        ),
    ];
    let (whats, tasks): (Vec<_>, Vec<_>) = attempts.into_iter().unzip();
    for (what, result) in whats.iter().zip(taskhost_guest::enqueue_many(&tasks)) {
        if result.is_ok() {
            return Outcome::Fail(format!("host accepted an enqueue-many with {what}"));
        }
    }
    for (what, task) in whats.into_iter().zip(tasks) {
        if taskhost_guest::enqueue(task).is_ok() {
            return Outcome::Fail(format!("host accepted an enqueue with {what}"));
        }
    }
    let _ = taskhost_guest::config(&"k".repeat(1 << 20));
    let _ = taskhost_guest::config("\0");
    taskhost_guest::log(taskhost_guest::Level::Error, "\0\u{7f}\u{202e}reversed");
    Outcome::Done
}

/// Enqueues every task's `QUEUE:KEY:PAYLOAD` in one host call.
fn bulk(batch: &[Task]) -> Vec<Outcome> {
    let parsed: Vec<Option<NewTask>> = batch
        .iter()
        .map(|t| {
            let text = String::from_utf8_lossy(&t.payload);
            let mut parts = text.splitn(3, ':');
            let (queue, key, payload) = (parts.next()?, parts.next()?, parts.next()?);
            Some(NewTask {
                queue: queue.to_owned(),
                payload: payload.as_bytes().to_vec(),
                unique_key: (!key.is_empty()).then(|| key.to_owned()),
                delay_ms: None,
            })
        })
        .collect();
    let tasks: Vec<NewTask> = parsed.iter().flatten().cloned().collect();
    let mut results = taskhost_guest::enqueue_many(&tasks).into_iter();
    parsed
        .iter()
        .map(|p| match p {
            None => Outcome::Fail("payload is not QUEUE:KEY:PAYLOAD".into()),
            Some(_) => match results.next() {
                Some(Ok(_)) => Outcome::Done,
                Some(Err(e)) => Outcome::Fail(e),
                None => Outcome::Fail("host answered too few results".into()),
            },
        })
        .collect()
}

/// Reads a number from config, or `default`.
fn config_num(key: &str, default: usize) -> usize {
    taskhost_guest::config(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Enqueues many tasks in one `enqueue-many` call.
fn flood() -> Outcome {
    let n = config_num("flood_tasks", 1000);
    let size = config_num("flood_bytes", 1);
    let queue = taskhost_guest::config("results").unwrap_or_default();
    let tasks: Vec<NewTask> = (0..n)
        .map(|_| NewTask {
            queue: queue.clone(),
            payload: vec![b'f'; size],
            unique_key: None,
            delay_ms: None,
        })
        .collect();
    match taskhost_guest::enqueue_many(&tasks)
        .into_iter()
        .find_map(Result::err)
    {
        None => Outcome::Done,
        Some(e) => Outcome::Fail(e),
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Holds the batch for `hold_ms`, then records who handled which key when.
fn journal(batch: &[Task]) -> Vec<Outcome> {
    let Some(first) = batch.first() else {
        return Vec::new();
    };
    let host = taskhost_guest::config("host").unwrap_or_default();
    let dir = taskhost_guest::config("journal_dir").unwrap_or_else(|| "/journal".into());
    let hold: u64 = taskhost_guest::config("hold_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let start = now_ms();
    std::thread::sleep(std::time::Duration::from_millis(hold));
    let end = now_ms();
    let mut text = String::new();
    for t in batch {
        let key = t.unique_key.as_deref().unwrap_or("");
        text.push_str(&format!(
            "{host}\t{key}\t{}\t{}\t{start}\t{end}\n",
            t.id, t.attempt
        ));
    }
    let path = format!("{dir}/{host}-{}-{}.tsv", first.id, first.attempt);
    match std::fs::write(&path, text) {
        Ok(()) => all_done(batch.len()),
        Err(e) => {
            let reason = format!("writing {path}: {e}");
            taskhost_guest::error(&reason);
            batch.iter().map(|_| Outcome::Retry(None)).collect()
        }
    }
}

/// Answers `done` `n` times.
fn all_done(n: usize) -> Vec<Outcome> {
    (0..n).map(|_| Outcome::Done).collect()
}

/// Never returns; `black_box` keeps the loop from being optimised away.
fn spin_forever() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Runs the script command held in one task's payload and answers its outcome.
fn run_command(task: &Task) -> Outcome {
    let command = String::from_utf8_lossy(&task.payload);
    let command = command.as_ref();
    let unknown = || Outcome::Fail(format!("unknown command: {command}"));
    let (verb, arg) = match command.split_once(':') {
        Some((verb, arg)) => (verb, Some(arg)),
        None => (command, None),
    };
    match (verb, arg) {
        ("ok", None) => Outcome::Done,
        ("trap", None) => panic!("testkit: command trap in task {}", task.id),
        ("loop", None) => spin_forever(),
        ("retry-until", Some(n)) => match n.parse::<u32>() {
            Ok(n) if task.attempt < n => Outcome::Retry(None),
            Ok(_) => Outcome::Done,
            Err(_) => unknown(),
        },
        ("retry-after", Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) if task.attempt <= 1 => Outcome::Retry(Some(ms)),
            Ok(_) => Outcome::Done,
            Err(_) => unknown(),
        },
        ("fail", Some(reason)) => Outcome::Fail(reason.to_owned()),
        ("sleep", Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Outcome::Done
            }
            Err(_) => unknown(),
        },
        ("get", Some(url)) => match taskhost_guest::http::get(url) {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Fail(format!("get {url}: {e:?}")),
        },
        ("enqueue", Some(rest)) => match rest.split_once(':') {
            Some((queue, payload)) => {
                let task = NewTask {
                    queue: queue.to_owned(),
                    payload: payload.as_bytes().to_vec(),
                    unique_key: None,
                    delay_ms: None,
                };
                match taskhost_guest::enqueue(task) {
                    Ok(_) => Outcome::Done,
                    Err(err) => Outcome::Fail(err),
                }
            }
            None => unknown(),
        },
        ("alloc", Some(n)) => match n.parse::<usize>() {
            Ok(n) => {
                let block = black_box(vec![1u8; n]);
                black_box(block.iter().map(|&b| b as u64).sum::<u64>());
                Outcome::Done
            }
            Err(_) => unknown(),
        },
        ("log", Some(text)) => {
            taskhost_guest::info(text);
            Outcome::Done
        }
        _ => unknown(),
    }
}

//! The `archive` plugin in every language: the same end-to-end test runs
//! against the Rust, Python, JavaScript, C and Go builds, and all of them
//! write the same archive contents for the same batch.

use std::path::Path;
use std::sync::Arc;

use crate::support::langs::{LANGS, Lang, archive, every_language, skip};
use crate::support::*;
use taskhost::plugin::{DirGrant, Limits, PluginSpec, Runtime};
use taskhost::pool::Outcome;
use taskhost::queue::Task;
use taskhost::queue::memory::{MemoryOptions, MemoryStore};

/// Pushes 10,000 tasks, drains them through the language's archiver with the
/// real `host` binary, and checks every task is archived exactly once.
fn ten_thousand_tasks_each_archived_exactly_once(lang: Lang) {
    if skip(lang) {
        return;
    }
    let plugin = archive(lang);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let archive = tmp.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let payloads = payload_file(tmp.path(), 10_000);
    let pushed = push_file(&data, &payloads);
    assert!(pushed.contains("pushed 10000 tasks"), "{pushed}");
    let status = ok(host().args(["status", "--data-dir"]).arg(&data));
    assert!(
        status.contains("default") && status.contains("10000"),
        "{status}"
    );

    let summary = ok(&mut archive_run(&plugin, &data, &archive));
    assert!(summary.contains("10000 done"), "{lang:?}: {summary}");
    let counts = archived(&archive);
    assert_eq!(counts.len(), 10_000, "{lang:?}: every task archived");
    for i in 0..10_000 {
        assert_eq!(
            counts.get(&format!("task-{i}")),
            Some(&1),
            "{lang:?}: task-{i}"
        );
    }
    let json = ok(host().args(["status", "--json", "--data-dir"]).arg(&data));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["pending"], 0);
    assert_eq!(v[0]["leased"], 0);
    assert_eq!(v[0]["dead"], 0);
}

every_language!(ten_thousand_tasks_each_archived_exactly_once);

/// A batch exercising every field and escaping rule of the archive format.
fn tricky_batch() -> Vec<Task> {
    let queue: Arc<str> = Arc::from("mail \"q\"\\");
    let payloads: Vec<(Option<&str>, Vec<u8>)> = vec![
        (None, b"hello".to_vec()),
        (
            Some("k\"1"),
            "line1\nline2\t\r \u{1} \u{1f} \u{7f} é ✓ 😀 </script>"
                .as_bytes()
                .to_vec(),
        ),
        (Some(""), Vec::new()),
        (None, vec![0xff, 0x00, 0x41, 0x80]),
        (Some("ключ"), vec![0xc3]),
        (None, vec![0xed, 0xa0, 0x80]), // an encoded surrogate is not UTF-8
        (None, vec![0xe0, 0x80, 0xaf]), // nor is an overlong encoding
        (None, vec![0xf4, 0x90, 0x80, 0x80]), // nor anything past U+10FFFF
        (None, b"{\"json\": [1, 2]}\\".to_vec()),
        (None, vec![b'x'; 5000]),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, (key, payload))| Task {
            // Ids stay below 2^53: JavaScript numbers carry them exactly.
            id: 9_007_199_254_740_000 + i as u64,
            queue: queue.clone(),
            unique_key: key.map(str::to_owned),
            payload,
            attempt: 3,
            enqueued_at_ms: 1_764_000_000_123 + i as u64,
        })
        .collect()
}

/// Runs one batch through `plugin` archiving into `dir`; answers (name without its random part, contents).
async fn archive_once(
    runtime: &Runtime,
    plugin: &Path,
    dir: &Path,
    batch: &[Task],
) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let store = Arc::new(MemoryStore::new(
        MemoryOptions::default(),
        taskhost::clock::system(),
    ));
    let spec = PluginSpec {
        name: plugin.display().to_string(),
        path: plugin.to_owned(),
        config: [("dir".to_owned(), "/archive".to_owned())].into(),
        dir: Some(DirGrant {
            host: dir.to_owned(),
            guest: "/archive".into(),
        }),
        limits: Limits::default(),
        allowed_hosts: Vec::new(),
        enqueue_to: None,
    };
    let loaded = runtime.load(spec, store).unwrap();
    let outcomes = loaded.call(batch).await.unwrap();
    assert_eq!(outcomes.len(), batch.len());
    assert!(outcomes.iter().all(|o| *o == Outcome::Done), "{outcomes:?}");
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let [name] = files.as_slice() else {
        panic!("{}: expected one file, found {files:?}", plugin.display())
    };
    let (stem, random) = name
        .strip_suffix(".jsonl")
        .and_then(|s| s.rsplit_once('-'))
        .unwrap_or_else(|| panic!("bad archive file name {name}"));
    assert!(
        random.len() == 16
            && random
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{name}: random part is 16 lower-case hex digits"
    );
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    (stem.to_owned(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_language_writes_the_same_archive_for_the_same_batch() {
    let runtime = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let batch = tricky_batch();
    let mut results = Vec::new();
    for lang in LANGS {
        if skip(lang) {
            continue;
        }
        let plugin = tokio::task::spawn_blocking(move || archive(lang))
            .await
            .unwrap();
        let dir = tmp.path().join(lang.name());
        results.push((lang, archive_once(&runtime, &plugin, &dir, &batch).await));
    }
    let (_, (rust_name, rust_text)) = &results[0];
    let first = batch[0].id;
    let last = batch[batch.len() - 1].id;
    assert_eq!(*rust_name, format!("{first:020}-{last:020}-3"));
    for line in rust_text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    for (lang, (name, text)) in &results[1..] {
        assert_eq!(name, rust_name, "{lang:?}: file name");
        if text != rust_text {
            for (i, (a, b)) in rust_text.lines().zip(text.lines()).enumerate() {
                assert_eq!(b, a, "{lang:?}: line {i} differs from Rust's");
            }
            panic!("{lang:?}: archive differs from Rust's:\n{text}\nRust:\n{rust_text}");
        }
    }
    runtime.shutdown();
}

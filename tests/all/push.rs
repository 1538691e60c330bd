//! `host push` input formats: lines, NDJSON task records, NUL-separated raw
//! bytes and whole files, checked byte for byte through the archive plugin.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use base64::Engine as _;

use crate::support::*;

/// Pushes `input` to queue `default` of `data` with these extra arguments;
/// returns the finished command's output.
fn push_stdin(data: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = host()
        .args(["push", "default", "--data-dir"])
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Drains `default` of `data` through the archive plugin; returns each
/// archived payload's bytes and how often it was archived.
fn drain_archived(data: &Path, archive: &Path) -> HashMap<Vec<u8>, usize> {
    std::fs::create_dir_all(archive).unwrap();
    ok(&mut archive_run(&plugin("archive"), data, archive));
    let mut out = HashMap::new();
    for e in std::fs::read_dir(archive).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") || name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let bytes = match (v["payload"].as_str(), v["payload_base64"].as_str()) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
                _ => panic!("no payload in {line}"),
            };
            *out.entry(bytes).or_default() += 1;
        }
    }
    out
}

#[test]
fn push_formats_keep_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut expect = |p: &[u8]| *want.entry(p.to_vec()).or_default() += 1;

    // raw0: any bytes but NUL, empty records kept, the final NUL a terminator.
    let out = push_stdin(
        &data,
        &["--format", "raw0"],
        b"bin\xff\xfe\0\0a\nb\r\n\0\x01\0",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed 4 tasks"),
        "{out:?}"
    );
    for p in [&b"bin\xff\xfe"[..], b"", b"a\nb\r\n", b"\x01"] {
        expect(p);
    }

    // lines: raw bytes; the empty line skipped and said so; \r kept and said so.
    let out = push_stdin(&data, &[], b"one\r\n\n\xff two\n");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed 2 tasks"),
        "{out:?}"
    );
    assert!(err.contains("skipped 1 empty lines"), "{err}");
    assert!(err.contains("1 lines end in \\r"), "{err}");
    expect(b"one\r");
    expect(b"\xff two");

    // ndjson: text and base64 records.
    let b64 = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255]);
    let ndjson = format!(
        "{{\"payload\":\"x y\"}}\n\n{{\"payload_base64\":\"{b64}\",\"unique_key\":\"k1\"}}\n"
    );
    let out = push_stdin(&data, &["--format", "ndjson"], ndjson.as_bytes());
    assert!(out.status.success(), "{out:?}");
    expect(b"x y");
    expect(&[0, 1, 2, 255]);

    // --payload-file: one task, the file's bytes (NULs and newlines included).
    let all: Vec<u8> = (0..=255u8).collect();
    let file = tmp.path().join("blob.bin");
    std::fs::write(&file, &all).unwrap();
    ok(host()
        .args(["push", "default", "--data-dir"])
        .arg(&data)
        .arg("--payload-file")
        .arg(&file));
    expect(&all);

    assert_eq!(drain_archived(&data, &tmp.path().join("archive")), want);
}

#[test]
fn push_errors_name_the_record_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    push_to_disk(&data, &["seed"]);
    let input = b"{\"payload\":\"a\"}\n{\"payload\":\"b\"}\n{\"payload_base64\":\"not base64!\"}\n";
    let out = push_stdin(&data, &["--format", "ndjson"], input);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("base64"), "{err}");
    assert!(err.contains("nothing was pushed"), "{err}");

    let out = push_stdin(&data, &["--keyed"], b"k1\tone\nno-tab-here\n");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("KEY<TAB>PAYLOAD"),
        "{err}"
    );

    // Nothing of either input was stored: only the seed task is there.
    let status = ok(host().args(["status", "--json", "--data-dir"]).arg(&data));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let pending: u64 = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| q["pending"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(pending, 1, "{status}");
}

//! The plugin author pages in plugins/docs/ are run: every `sh` block, in
//! order, as one script in an empty directory with the `host` binary on PATH;
//! a block whose info string carries `file=PATH` is written to PATH first.
//! So the pages cannot drift from what works.

use crate::support;

use std::path::Path;
use std::process::Command;

use crate::support::root;

/// Turns a markdown page into a bash script.
fn script(page: &str) -> String {
    let mut out = String::from("set -euxo pipefail\n");
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        if let Some(file) = words.find_map(|w| w.strip_prefix("file=")) {
            assert!(!body.contains("TASKHOST_DOC_EOF"));
            out.push_str(&format!(
                "mkdir -p \"$(dirname '{file}')\"\ncat > '{file}' <<'TASKHOST_DOC_EOF'\n{body}TASKHOST_DOC_EOF\n"
            ));
        } else if lang == "sh" {
            out.push_str(&body);
        }
    }
    out
}

/// Runs page `name` in a fresh directory; `prepare` may set up the directory first.
fn run_page(name: &str, prepare: impl FnOnce(&Path)) {
    run_page_with(name, prepare, &[]);
}

/// `run_page`, with `tools` (folders of toolchains) first on `PATH`.
fn run_page_with(name: &str, prepare: impl FnOnce(&Path), tools: &[std::path::PathBuf]) {
    let path = root().join("plugins/docs").join(name);
    let page = std::fs::read_to_string(&path).unwrap();
    let script = script(&page);
    assert!(
        script.contains("host run --plugin my.wasm"),
        "{name} gets to host run"
    );
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path());
    let bin = Path::new(env!("CARGO_BIN_EXE_host")).parent().unwrap();
    let old = std::env::var_os("PATH").unwrap_or_default();
    let path_var = std::env::join_paths(
        std::iter::once(bin.to_owned())
            .chain(tools.iter().cloned())
            .chain(std::env::split_paths(&old)),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(tmp.path())
        .env("PATH", path_var)
        .env_remove("TASKHOST_LOG")
        // A newcomer's shell: the test's own cargo settings (a shared
        // target folder, say) must not decide whether the page works.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: a command failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_page_runs() {
    run_page("python.md", |_| {});
}

#[test]
fn javascript_page_runs() {
    run_page("javascript.md", |_| {});
}

#[test]
fn rust_page_runs() {
    // Share one cargo target directory across runs so the page's build does
    // not compile wit-bindgen from scratch every time (new-plugin writes
    // around an existing `target`).
    run_page("rust.md", |dir| {
        let shared = support::langs::langs_dir().join("rust-page-target");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(dir.join("my-plugin")).unwrap();
        std::os::unix::fs::symlink(&shared, dir.join("my-plugin/target")).unwrap();
    });
}

#[test]
fn c_page_runs() {
    if support::langs::skip(support::langs::Lang::C) {
        return;
    }
    run_page("c.md", |_| {});
}

#[test]
fn go_page_runs() {
    let Ok(go) = support::langs::go_bin() else {
        support::langs::skip(support::langs::Lang::Go);
        return;
    };
    run_page_with("go.md", |_| {}, &[go]);
}

#[test]
fn new_plugin_refuses_to_overwrite_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    support::ok(
        support::host()
            .args(["new-plugin", "--lang", "js", "p", "--dir"])
            .arg(tmp.path()),
    );
    let out = support::output(
        support::host()
            .args(["new-plugin", "--lang", "js", "p", "--dir"])
            .arg(tmp.path()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    let out = support::output(
        support::host()
            .args(["new-plugin", "--lang", "python", "9 lives", "--dir"])
            .arg(tmp.path().join("x")),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin name"));
}

#[test]
fn pages_are_complete() {
    for page in ["rust.md", "python.md", "javascript.md", "c.md", "go.md"] {
        let text = std::fs::read_to_string(root().join("plugins/docs").join(page)).unwrap();
        let s = script(&text);
        for needed in [
            "host new-plugin",
            "host push",
            "--set greeting=",
            "grep \"hi: task 1",
            "followups",
        ] {
            assert!(s.contains(needed), "{page}: no `{needed}` in its commands");
        }
    }
}

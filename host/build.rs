//! Lists the Go runtime package the Go bindings import
//! (`go.bytecodealliance.org/pkg`), taken from the `wit-bindgen-go` crate,
//! which ships its source in `src/pkg/`: `host bindgen --lang go` writes it
//! beside the bindings, so a Go plugin builds offline with the very version
//! its bindings were generated for, and no copy is kept in this tree.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of the package a Go plugin compiles against, plus its licence.
const FILES: &[&str] = &[
    "go.mod",
    "LICENSE",
    "wit/async/async.go",
    "wit/async/empty.s",
    "wit/runtime/empty.s",
    "wit/runtime/runtime.go",
    "wit/types/future.go",
    "wit/types/option.go",
    "wit/types/result.go",
    "wit/types/stream.go",
    "wit/types/tuple.go",
    "wit/types/unit.go",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../Cargo.lock");
    let pkg = go_pkg_dir();
    // A list of (path in the plugin, contents) for `host bindgen` to include.
    let mut list = String::from("&[\n");
    for rel in FILES {
        let file = pkg.join(rel);
        assert!(file.is_file(), "wit-bindgen-go ships no {}", file.display());
        list.push_str(&format!(
            "    (\"witpkg/{rel}\", include_str!({:?})),\n",
            file
        ));
    }
    list.push_str("]\n");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("go_pkg.rs"), list).expect("writing go_pkg.rs");
}

/// `src/pkg` of the `wit-bindgen-go` this build resolved, found the way
/// cargo documents for a dependency's sources: `cargo metadata`.
fn go_pkg_dir() -> PathBuf {
    let cargo = env::var_os("CARGO").expect("cargo sets CARGO");
    let manifest =
        Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("Cargo.toml");
    // Only this target's packages: cargo has fetched those for this build
    // (the others would be downloaded just to be listed). Offline first, so
    // an offline build works; online if a package is not fetched yet.
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let metadata = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args(["metadata", "--format-version=1", "--locked"])
            .args(["--filter-platform", &target])
            .arg("--manifest-path")
            .arg(&manifest);
        if offline {
            c.arg("--offline");
        }
        c.output()
            .unwrap_or_else(|e| panic!("running cargo metadata: {e}"))
    };
    let mut output = metadata(true);
    if !output.status.success() {
        output = metadata(false);
    }
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata writes JSON");
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wit-bindgen-go")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("wit-bindgen-go is a dependency of taskhost");
    Path::new(manifest_path)
        .parent()
        .expect("a manifest has a folder")
        .join("src/pkg")
}

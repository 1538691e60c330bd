//! `host bindgen`: guest bindings for C and Go, generated from the WIT
//! compiled into this host, so no bindings generator has to be installed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{Args, ValueEnum};
use wit_bindgen_core::{Files, wit_parser::Resolve};

use super::wit::WIT;

/// A language `host bindgen` writes bindings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BindgenLang {
    /// C: `<world>.h`, `<world>.c` and `<world>_component_type.o`.
    C,
    /// Go: one package per interface and `wit_exports.go` (package main).
    Go,
}

/// Options of `host bindgen`.
#[derive(Debug, Args)]
pub struct BindgenArgs {
    /// Language of the bindings.
    #[arg(long, value_enum)]
    lang: BindgenLang,
    /// World: handler-plugin, bulk-handler-plugin or source-plugin.
    #[arg(long, default_value = "handler-plugin")]
    world: String,
    /// Directory to write into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// The Go bindings' runtime package (`go.bytecodealliance.org/pkg`) as
/// `witpkg/...`, from the wit-bindgen-go crate that generates the bindings
/// (see build.rs); a plugin's go.mod points at it with a `replace` line.
const GO_PKG: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/go_pkg.rs"));

/// Says where `witpkg/` comes from, in the plugin's own tree.
const GO_PKG_NOTE: &str = "`go.bytecodealliance.org/pkg`, the runtime package the Go bindings import,\n\
written by `host bindgen --lang go` from the `wit-bindgen-go` crate it was\n\
built with (licence in `LICENSE`), so that the plugin builds offline; `go.mod`\n\
points at it with a `replace` line.\n";

/// Generated files for `world` in `lang`: relative path and contents (for
/// Go, with the runtime package under `witpkg/`).
pub fn generate(lang: BindgenLang, world: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut resolve = Resolve::default();
    let pkg = resolve
        .push_str("plugin.wit", WIT)
        .context("parsing the host's WIT")?;
    let id = resolve
        .select_world(&[pkg], Some(world))
        .with_context(|| format!("no world {world:?} in the plugin WIT"))?;
    let mut generator = match lang {
        BindgenLang::C => wit_bindgen_c::Opts::default().build(),
        // Unformatted: gofmt may be absent, and the output must not depend on it.
        BindgenLang::Go => wit_bindgen_go::Opts {
            format: wit_bindgen_go::Format::False,
            ..Default::default()
        }
        .build(),
    };
    let mut files = Files::default();
    generator
        .generate(&mut resolve, id, &mut files)
        .map_err(|e| anyhow!("generating {lang:?} bindings for {world}: {e:#}"))?;
    let mut out: Vec<(String, Vec<u8>)> = files
        .iter()
        // A Go plugin keeps its own go.mod (it points at `witpkg/`).
        .filter(|(name, _)| !(lang == BindgenLang::Go && *name == "go.mod"))
        .map(|(name, bytes)| (name.to_owned(), bytes.to_vec()))
        .collect();
    if lang == BindgenLang::Go {
        out.extend(
            GO_PKG
                .iter()
                .chain([&("witpkg/VENDORED.md", GO_PKG_NOTE)])
                .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec())),
        );
    }
    Ok(out)
}

/// Writes `files` under `dir`, creating folders.
pub fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Generates and writes the bindings.
pub fn bindgen(a: BindgenArgs) -> Result<()> {
    let files = generate(a.lang, &a.world)?;
    write_all(&a.out, &files)?;
    outln!(
        "wrote {} {:?} binding files for {} into {}",
        files.len(),
        a.lang,
        a.world,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_has_c_and_go_bindings() {
        for world in taskhost::plugin::componentize::WORLDS {
            let c = generate(BindgenLang::C, world).unwrap();
            let stem = world.replace('-', "_");
            for suffix in [".h", ".c", "_component_type.o"] {
                assert!(
                    c.iter().any(|(n, _)| *n == format!("{stem}{suffix}")),
                    "{world}: {c:?}"
                );
            }
            let go = generate(BindgenLang::Go, world).unwrap();
            assert!(go.iter().any(|(n, _)| n == "wit_exports.go"), "{world}");
            assert!(!go.iter().any(|(n, _)| n == "go.mod"));
            for runtime in [
                "witpkg/go.mod",
                "witpkg/LICENSE",
                "witpkg/wit/types/option.go",
            ] {
                assert!(go.iter().any(|(n, _)| n == runtime), "{world}: {runtime}");
            }
        }
    }
}

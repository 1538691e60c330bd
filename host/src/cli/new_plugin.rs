//! `host new-plugin`: writes a ready-to-build plugin skeleton, as `spin new` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::wit::WIT;

/// A language a skeleton can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built by cargo for wasm32-wasip2.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by jco componentize (QuickJS).
    Js,
}

/// Options of `host new-plugin`.
#[derive(Debug, Args)]
pub struct NewPluginArgs {
    /// Language of the plugin.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Plugin name: letters, digits, `-` and `_`, starting with a letter.
    name: String,
    /// Directory to create [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Files of a skeleton: relative path and contents (`{{name}}` is replaced).
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![("wit/plugin.wit", WIT)];
    files.extend(match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../../plugins/templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../plugins/templates/rust/src/lib.rs"),
            ),
            (
                ".gitignore",
                include_str!("../../../plugins/templates/rust/gitignore"),
            ),
        ],
        Lang::Python => vec![
            (
                "app.py",
                include_str!("../../../plugins/templates/python/app.py"),
            ),
            (
                "requirements.txt",
                include_str!("../../../plugins/templates/python/requirements.txt"),
            ),
            (
                ".gitignore",
                include_str!("../../../plugins/templates/python/gitignore"),
            ),
        ],
        Lang::Js => vec![
            (
                "plugin.js",
                include_str!("../../../plugins/templates/js/plugin.js"),
            ),
            (
                "package.json",
                include_str!("../../../plugins/templates/js/package.json"),
            ),
            (
                ".gitignore",
                include_str!("../../../plugins/templates/js/gitignore"),
            ),
        ],
    });
    files
}

/// How to build a skeleton and where the component lands.
fn next_steps(lang: Lang, name: &str) -> String {
    match lang {
        Lang::Rust => format!(
            "rustup target add wasm32-wasip2\ncargo build --release --target wasm32-wasip2\n\
             host run --plugin target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        Lang::Python => "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n\
             .venv/bin/componentize-py -d wit -w handler-plugin componentize app -o plugin.wasm\n\
             host run --plugin plugin.wasm"
            .to_owned(),
        Lang::Js => "npm install\nnpm run build\nhost run --plugin plugin.wasm".to_owned(),
    }
}

fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "plugin name {name:?}: use letters, digits, '-' and '_', starting with a letter \
             (it becomes a package name)"
        );
    }
    Ok(())
}

/// Writes the skeleton; refuses to overwrite any file.
pub fn new_plugin(a: NewPluginArgs) -> Result<()> {
    check_name(&a.name)?;
    let dir = a.dir.unwrap_or_else(|| PathBuf::from(&a.name));
    for (rel, _) in files(a.lang) {
        let path = dir.join(rel);
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; new-plugin overwrites nothing (choose another --dir)",
                path.display()
            );
        }
    }
    for (rel, text) in files(a.lang) {
        write(&dir.join(rel), &text.replace("{{name}}", &a.name))?;
    }
    outln!(
        "created {:?} plugin {} in {}\nnext, in that directory:\n{}",
        a.lang,
        a.name,
        dir.display(),
        next_steps(a.lang, &a.name)
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_package_names() {
        assert!(check_name("my-plugin_2").is_ok());
        for bad in ["", "2x", "-x", "a b", "a/b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_skeleton_has_the_wit_and_no_leftover_placeholder_but_the_name() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = files(lang);
            assert!(
                files
                    .iter()
                    .any(|(p, t)| *p == "wit/plugin.wit" && t.contains("world handler-plugin"))
            );
            for (path, text) in files {
                let rest = text.replace("{{name}}", "x");
                assert!(!rest.contains("{{"), "{lang:?} {path}");
            }
        }
    }
}

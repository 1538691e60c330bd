//! `host new-plugin`: writes a ready-to-build plugin skeleton, as `spin new` does.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use super::bindgen::{BindgenLang, generate, write_all};
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
    /// C, built by Debian's clang-19 for wasm32-wasi, then `host componentize`.
    C,
    /// Go (1.27.1 or newer), built for wasip1, then `host componentize`.
    Go,
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
        Lang::C => vec![
            (
                "plugin.c",
                include_str!("../../../plugins/templates/c/plugin.c"),
            ),
            (
                "Makefile",
                include_str!("../../../plugins/templates/c/Makefile"),
            ),
            (
                ".gitignore",
                include_str!("../../../plugins/templates/c/gitignore"),
            ),
        ],
        Lang::Go => go_files(),
    });
    files
}

/// The Go skeleton (the bindings' runtime package comes with the bindings).
fn go_files() -> Vec<(&'static str, &'static str)> {
    macro_rules! go {
        ($($path:literal),* $(,)?) => {
            vec![$(($path, include_str!(concat!("../../../plugins/templates/go/", $path)))),*]
        };
    }
    let mut files = go![
        "go.mod",
        "Makefile",
        "export_taskhost_plugin_handler/handler.go"
    ];
    files.push((
        ".gitignore",
        include_str!("../../../plugins/templates/go/gitignore"),
    ));
    files
}

/// Bindings the skeleton needs generated from the host's WIT (C and Go only),
/// as paths relative to the skeleton.
fn generated(lang: Lang) -> Result<Vec<(String, Vec<u8>)>> {
    let (bindgen_lang, dir) = match lang {
        Lang::C => (BindgenLang::C, "bindings/"),
        Lang::Go => (BindgenLang::Go, ""),
        Lang::Rust | Lang::Python | Lang::Js => return Ok(Vec::new()),
    };
    Ok(generate(bindgen_lang, "handler-plugin")?
        .into_iter()
        .map(|(name, bytes)| (format!("{dir}{name}"), bytes))
        .collect())
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
        Lang::C | Lang::Go => format!("make\nhost run --plugin {name}.wasm"),
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
    // The templates with the name filled in, then the generated bindings.
    let mut all: Vec<(String, Vec<u8>)> = files(a.lang)
        .into_iter()
        .map(|(rel, text)| {
            (
                rel.to_owned(),
                text.replace("{{name}}", &a.name).into_bytes(),
            )
        })
        .collect();
    all.extend(generated(a.lang)?);
    for (rel, _) in &all {
        let path = dir.join(rel);
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; new-plugin overwrites nothing (choose another --dir)",
                path.display()
            );
        }
    }
    write_all(&dir, &all)?;
    outln!(
        "created {:?} plugin {} in {}\nnext, in that directory:\n{}",
        a.lang,
        a.name,
        dir.display(),
        next_steps(a.lang, &a.name)
    );
    Ok(())
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
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go] {
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

//! Host configuration files for tests, built key by key, so a test names
//! only what it sets and paths are quoted once, correctly.

use std::fmt::{Display, Write as _};
use std::path::{Path, PathBuf};

/// A host TOML file under construction. Keys go into the table opened last:
/// top-level keys first, then `[[plugins]]` and `[[sources]]` tables.
#[derive(Debug, Clone, Default)]
pub struct HostToml {
    text: String,
}

/// `s` as a TOML basic string, quotes included.
pub fn quoted(s: impl Display) -> String {
    let mut out = String::from('"');
    for c in s.to_string().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl HostToml {
    /// A configuration keeping its data in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self::default().string("data_dir", data_dir.display())
    }

    /// `key = "value"`.
    pub fn string(self, key: &str, value: impl Display) -> Self {
        self.raw(key, &quoted(value))
    }

    /// `key = value`, with `value` already TOML (a number, an inline table).
    pub fn raw(mut self, key: &str, value: &str) -> Self {
        let _ = writeln!(self.text, "{key} = {value}");
        self
    }

    /// The queue backend, by name.
    pub fn backend(self, name: &str) -> Self {
        self.string("backend", name)
    }

    /// The Redis backend at `url`.
    pub fn redis(self, url: &str) -> Self {
        self.backend("redis").string("queue_url", url)
    }

    /// Opens a `[[plugins]]` table for the component at `path`.
    pub fn plugin(mut self, path: &Path) -> Self {
        self.text.push_str("[[plugins]]\n");
        self.string("path", path.display())
    }

    /// Opens a `[[sources]]` table for the component at `path`.
    pub fn source(mut self, path: &Path) -> Self {
        self.text.push_str("[[sources]]\n");
        self.string("path", path.display())
    }

    /// Grants the plugin of the open table the host directory `host`, seen
    /// as `guest`.
    pub fn dir(self, host: &Path, guest: &str) -> Self {
        let value = format!(
            "{{ host = {}, guest = {} }}",
            quoted(host.display()),
            quoted(guest)
        );
        self.raw("dir", &value)
    }

    /// Writes the file to `path`; returns `path`.
    pub fn write(&self, path: PathBuf) -> PathBuf {
        std::fs::write(&path, &self.text).expect("writing the host config");
        path
    }
}

//! On-disk cache of compiled components.
//!
//! Entries are keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version, target, compiler settings), so a
//! restart with the same file and engine skips compilation, and anything else
//! misses. Deserialising compiled code is trusted code loading, so an entry
//! is only used when its own SHA-256, recorded beside it at write time,
//! still matches: a torn write or a flipped bit makes a miss and a rebuild,
//! never a crash. The cache directory must be as trusted as the host binary.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

/// Where a component came from on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled now (and written to the cache if there is one).
    Compiled,
    /// Loaded from the cache.
    Cached,
}

impl CodeCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        // The compatibility hash covers everything that makes compiled code
        // unusable elsewhere; fold it into a stable key.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        Self { dir, engine_key }
    }

    fn entry(&self, component_sha: &str) -> PathBuf {
        self.dir
            .join(format!("{component_sha}-{}.cwasm", self.engine_key))
    }

    /// The cached component for these bytes, if a valid entry exists.
    pub fn get(&self, engine: &Engine, component_sha: &str) -> Option<Component> {
        let path = self.entry(component_sha);
        let sum_path = path.with_extension("cwasm.sha256");
        let bytes = std::fs::read(&path).ok()?;
        let recorded = std::fs::read_to_string(&sum_path).ok()?;
        if recorded.trim() != sha256_hex(&bytes) {
            tracing::warn!(path = %path.display(), "compiled-code cache entry is corrupt; recompiling");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&sum_path);
            return None;
        }
        // SAFETY: the bytes were written by `put` from `Component::serialize`
        // of this engine configuration (the key says so) and are unchanged
        // since (their checksum matches); wasmtime also checks the header's
        // engine compatibility and refuses a mismatch with an error.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled-code cache entry unusable; recompiling");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component; failures only cost a later recompile.
    pub fn put(&self, component_sha: &str, component: &Component) {
        if let Err(e) = self.try_put(component_sha, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled-code cache entry");
        }
    }

    fn try_put(&self, component_sha: &str, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize()?;
        let path = self.entry(component_sha);
        let sum_path = path.with_extension("cwasm.sha256");
        // Checksum first: an entry whose data is missing or torn never
        // matches it, so a crash between the two writes leaves a miss.
        write_atomic(&sum_path, sha256_hex(&bytes).as_bytes())?;
        write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

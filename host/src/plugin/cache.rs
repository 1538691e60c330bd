//! On-disk cache of compiled components.
//!
//! Entries are keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version, target, compiler settings), so a
//! restart with the same file and engine skips compilation, and anything else
//! misses. Deserialising compiled code is trusted code loading, so the cache
//! directory must belong to the host's user and be closed to group and
//! others, and an entry is only used when its HMAC-SHA256 tag, keyed by a
//! secret kept beside the directory (`<cache dir>.key`, mode 0600) and
//! covering the entry's name and bytes, still matches: a torn write, a
//! flipped bit or an entry moved under another component's name makes a
//! miss and a rebuild, never a crash or another plugin's code.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// The secret that authenticates entries.
    key: [u8; 32],
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
    /// A cache in `dir` for components compiled by `engine`; creates the
    /// directory (0700) and its key file (0600) if missing, and refuses a
    /// directory or key that another user could have written.
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<Self, String> {
        // The compatibility hash covers everything that makes compiled code
        // unusable elsewhere; fold it into a stable key.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create compiled-code cache {}: {e}", dir.display()))?;
        check_private(&dir, 0o022, "compiled-code cache directory")?;
        let key = load_key(&key_path(&dir))?;
        Ok(Self {
            dir,
            engine_key,
            key,
        })
    }

    fn entry(&self, component_sha: &str) -> PathBuf {
        self.dir
            .join(format!("{component_sha}-{}.cwasm", self.engine_key))
    }

    /// The cached component for these bytes, if a valid entry exists.
    pub fn get(&self, engine: &Engine, component_sha: &str) -> Option<Component> {
        let path = self.entry(component_sha);
        let tag_path = path.with_extension("cwasm.mac");
        let bytes = std::fs::read(&path).ok()?;
        let recorded = std::fs::read_to_string(&tag_path).ok()?;
        if !same(
            recorded.trim().as_bytes(),
            self.tag(&path, &bytes).as_bytes(),
        ) {
            tracing::warn!(path = %path.display(), "compiled-code cache entry fails its authentication; recompiling");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&tag_path);
            return None;
        }
        // SAFETY: the bytes were written by `put` from `Component::serialize`
        // of this engine configuration for this component (the tag, keyed by
        // a secret only this user can read, covers the name and the bytes);
        // wasmtime also checks the header's engine compatibility and refuses
        // a mismatch with an error.
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
        let bytes = component.serialize()?;
        let path = self.entry(component_sha);
        let tag_path = path.with_extension("cwasm.mac");
        // Tag first: an entry whose data is missing or torn never matches
        // it, so a crash between the two writes leaves a miss.
        write_atomic(&tag_path, self.tag(&path, &bytes).as_bytes())?;
        write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// Hex HMAC-SHA256 over an entry's file name and bytes.
    fn tag(&self, path: &Path, bytes: &[u8]) -> String {
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let mac = hmac_sha256(&self.key, &[name, b"\0", bytes]);
        mac.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Where the key of the cache in `dir` is kept: beside it, not in it, so
/// whoever may only write cache entries cannot forge their tags.
fn key_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_owned();
    name.push(".key");
    dir.with_file_name(name)
}

/// Refuses `path` unless the host's user owns it and no bit of
/// `forbidden` (group/other permissions) is set.
fn check_private(path: &Path, forbidden: u32, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{what} {} is owned by uid {}, not by this host's uid {me}; refusing to load code from it",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(format!(
            "{what} {} has mode {mode:03o}, open to group or others; refusing it (chmod go-rwx)",
            path.display()
        ));
    }
    Ok(())
}

/// Reads the cache key, creating it (32 random bytes, mode 0600) if missing.
fn load_key(path: &Path) -> Result<[u8; 32], String> {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut f) => {
            let mut key = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut key))
                .and_then(|()| f.write_all(&key))
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot create cache key {}: {e}", path.display()))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create cache key {}: {e}", path.display())),
    }
    check_private(path, 0o077, "compiled-code cache key")?;
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read cache key {}: {e}", path.display()))?;
    bytes.try_into().map_err(|_| {
        format!(
            "cache key {} is not 32 bytes long; delete it to make a new one",
            path.display()
        )
    })
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares two tags in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::hmac_sha256;

    #[test]
    fn hmac_matches_rfc_4231_with_a_32_byte_key() {
        // RFC 4231 test case 2 uses a 4-byte key ("Jefe"); zero-padded to
        // 32 bytes it is the same HMAC key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

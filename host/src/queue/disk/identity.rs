//! The store's identity, and the checks that keep a damaged store from being
//! served as if it were fine.
//!
//! A data directory that has held a queue carries a marker file naming the
//! store (a random id and its creation time); the database carries the same
//! id. SQLite opens a missing or zero-byte file as a valid empty database,
//! so without the marker a truncated or deleted file would silently become
//! an empty queue and every task in it would be gone. With it, opening
//! refuses, naming the file, until the file is restored or the operator
//! starts over on purpose (`host init --force`).

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::super::QueueError;
use super::DB_FILE;

/// The marker file inside a data directory.
pub(crate) const MARKER_FILE: &str = "store.json";

/// Databases up to this size get `PRAGMA quick_check` on every open: a few
/// milliseconds per megabyte, so a damaged file is refused before any task
/// is leased or pushed. Larger ones are checked on demand (`host check`).
pub(super) const QUICK_CHECK_MAX_BYTES: u64 = 64 << 20;

/// What the marker file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    /// The store's id, also kept inside the database.
    pub id: String,
    /// When the store was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// The database file it belongs to, relative to the data directory.
    pub database: String,
}

fn disk_error(path: &Path, message: String) -> QueueError {
    QueueError::Disk {
        path: path.display().to_string(),
        message,
    }
}

/// Reads the marker, if the directory has one.
pub(super) fn read_marker(dir: &Path) -> Result<Option<Marker>, QueueError> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            disk_error(
                &path,
                format!(
                    "the store marker is unreadable ({e}); restore it or run `host init --force`"
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(disk_error(
            &path,
            format!("cannot read the store marker: {e}"),
        )),
    }
}

/// Refuses a database that the marker says held a store but that is now
/// missing or empty (SQLite would open either as a new, empty queue).
pub(super) fn refuse_vanished(dir: &Path, db: &Path, marker: &Marker) -> Result<(), QueueError> {
    let state = match std::fs::metadata(db) {
        Ok(m) if m.len() > 0 => return Ok(()),
        Ok(_) => "is empty (0 bytes)",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
        Err(e) => {
            return Err(disk_error(
                db,
                format!("cannot read the database file: {e}"),
            ));
        }
    };
    Err(disk_error(
        db,
        format!(
            "the database {state}, but {} says this directory holds queue store {} (created {}): \
             refusing to start an empty queue in its place. Restore the file, or run \
             `host init --force --data-dir {}` to start a new, empty store",
            dir.join(MARKER_FILE).display(),
            marker.id,
            shown_time(marker.created_ms),
            dir.display()
        ),
    ))
}

/// Runs `PRAGMA quick_check` on databases small enough for it to be cheap.
pub(super) fn quick_check(conn: &Connection, db: &Path) -> Result<(), QueueError> {
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    if size > QUICK_CHECK_MAX_BYTES {
        return Ok(());
    }
    let problems = pragma_check(conn, "quick_check").map_err(|e| corrupt(db, &e.to_string()))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(corrupt(db, &problems.join("; ")))
    }
}

/// Runs `PRAGMA integrity_check` (or `quick_check`): the problems found, none when sound.
pub(super) fn pragma_check(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(20)"))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        let line = r?;
        if line != "ok" {
            out.push(line);
        }
    }
    Ok(out)
}

/// The error for a database SQLite reports as damaged.
pub(super) fn corrupt(db: &Path, sqlite_says: &str) -> QueueError {
    QueueError::Corrupt {
        path: db.display().to_string(),
        message: format!(
            "SQLite reports the database damaged: {sqlite_says}. Nothing more is read from or \
             written to it; `host check` lists the problems. Restore the file from a backup, or \
             move it aside and run `host init --force`"
        ),
    }
}

/// Whether an SQLite error message means the file itself is damaged (it
/// will not heal by retrying), as opposed to a busy or full database.
///
/// Matched on SQLite's own texts for SQLITE_CORRUPT and SQLITE_NOTADB: the
/// writer thread hands its callers messages, not error codes.
pub(super) fn is_damage(message: &str) -> bool {
    message.contains("database disk image is malformed")
        || message.contains("file is not a database")
        || message.contains("malformed database schema")
}

/// Makes the database and the marker agree: a new store gets an id in both,
/// a store from before markers existed gets its marker, and a database that
/// is not the store the marker names is refused.
pub(super) fn settle(
    conn: &mut Connection,
    dir: &Path,
    db: &Path,
    marker: Option<Marker>,
    now_ms: u64,
) -> Result<(), QueueError> {
    let sql = |e: rusqlite::Error| disk_error(db, e.to_string());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    )
    .map_err(sql)?;
    let get = |key: &str| {
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()
    };
    let stored = get("store_id").map_err(sql)?;
    let created = get("created_ms")
        .map_err(sql)?
        .and_then(|c| c.parse().ok())
        .unwrap_or(now_ms);
    let wanted = match (&marker, stored) {
        (Some(m), Some(id)) if m.id == id => return tx.commit().map_err(sql),
        (Some(m), found) => {
            return Err(disk_error(
                db,
                format!(
                    "{} says this directory holds queue store {}, but the database {}: it was \
                     replaced by another file. Restore the right file, or run `host init --force \
                     --data-dir {}` to start a new, empty store",
                    dir.join(MARKER_FILE).display(),
                    m.id,
                    match found {
                        Some(id) => format!("is store {id}"),
                        None => "carries no store id".to_owned(),
                    },
                    dir.display()
                ),
            ));
        }
        (None, Some(id)) => Marker {
            id,
            created_ms: created,
            database: DB_FILE.to_owned(),
        },
        (None, None) => {
            let m = Marker {
                id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                created_ms: now_ms,
                database: DB_FILE.to_owned(),
            };
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('store_id', ?1), ('created_ms', ?2)",
                rusqlite::params![m.id, m.created_ms.to_string()],
            )
            .map_err(sql)?;
            m
        }
    };
    tx.commit().map_err(sql)?;
    write_marker(dir, &wanted)
}

/// Writes the marker atomically; another process that wrote the same one
/// first is fine, a different one is not.
fn write_marker(dir: &Path, m: &Marker) -> Result<(), QueueError> {
    let path = dir.join(MARKER_FILE);
    // Unique per call: threads of one process may open a store at once too.
    let tmp = dir.join(format!(
        ".{MARKER_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let io = |e: std::io::Error| disk_error(&path, format!("cannot write the store marker: {e}"));
    let mut text = serde_json::to_vec_pretty(m).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    // A hard link never replaces: of two processes creating the store at
    // once, the second finds the first's marker and compares.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_marker(dir)? {
            Some(other) if other.id == m.id => Ok(()),
            Some(other) => Err(disk_error(
                &path,
                format!(
                    "another process created store {} here at the same time",
                    other.id
                ),
            )),
            None => Err(io(e)),
        },
        Err(e) => Err(io(e)),
    }
}

/// Moves the database, its WAL files and the marker aside, so the next open
/// starts a new, empty store; returns where they went.
pub fn move_aside(dir: &Path, now_ms: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut moved = Vec::new();
    for name in [
        DB_FILE.to_owned(),
        format!("{DB_FILE}-wal"),
        format!("{DB_FILE}-shm"),
        MARKER_FILE.to_owned(),
    ] {
        let from = dir.join(&name);
        if from.exists() {
            let to = dir.join(format!("{name}.replaced-{now_ms}"));
            std::fs::rename(&from, &to)?;
            moved.push(to);
        }
    }
    Ok(moved)
}

/// When a data directory cannot be written, says so (SQLite's own message
/// is "unable to open database file"); `None` when it can be.
pub(super) fn read_only(dir: &Path) -> Option<String> {
    let probe = dir.join(format!(".write-test.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!(
            "the data directory {} is read-only ({e}): the disk queue writes its database, \
             write-ahead log and lock files there. Make it writable, or choose another with \
             --data-dir",
            dir.display()
        )),
    }
}

fn shown_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

//! The log's fsync, off the writer thread. With `sync = "full"` the writer
//! commits a group that must reach the disk and hands its replies here;
//! this thread fsyncs the log, then answers them, while the writer already
//! runs the next group. One fsync covers every commit before it, so groups
//! committed while an fsync runs share the next one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::writer::Finish;

/// The database's write-ahead log (SQLite keeps the file while a
/// connection is open), opened at its first fsync.
pub(super) struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    /// The log of the database at `db`.
    pub(super) fn of(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push("-wal");
        Self {
            path: name.into(),
            file: None,
        }
    }

    /// Flushes the log's committed frames to the disk.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(File::open(&self.path)?),
        };
        file.sync_data()
    }
}

/// The thread that fsyncs the log and then answers committed groups.
pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Vec<Finish>>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread that fsyncs `wal`.
    pub(super) fn start(mut wal: WalFile) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<Finish>>();
        let thread = std::thread::Builder::new()
            .name("taskhost-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut groups = vec![first];
                    groups.extend(rx.try_iter());
                    let error = wal
                        .sync()
                        .err()
                        .map(|e| format!("cannot fsync {}: {e}", wal.path.display()));
                    for f in groups.into_iter().flatten() {
                        f(error.as_deref());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Answers `finishes`, whose group has committed, once the log holding
    /// it is on the disk.
    pub(super) fn answer_when_synced(&self, finishes: Vec<Finish>) {
        let Some(tx) = &self.tx else {
            return answer(finishes, Some("the disk queue is closing"));
        };
        if let Err(mpsc::SendError(back)) = tx.send(finishes) {
            answer(back, Some("the disk queue's fsync thread stopped"));
        }
    }

    /// Answers everything handed over, then stops the thread.
    pub(super) fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends every reply, with the reason the group failed if it did.
pub(super) fn answer(finishes: Vec<Finish>, error: Option<&str>) {
    for f in finishes {
        f(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands three groups to a syncer whose log is `db`'s; answers what each
    /// was told, in the order told.
    fn three_groups(db: &Path) -> Vec<(usize, Option<String>)> {
        let mut syncer = Syncer::start(WalFile::of(db)).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            syncer.answer_when_synced(vec![Box::new(move |e: Option<&str>| {
                tx.send((i, e.map(str::to_owned))).unwrap()
            })]);
        }
        // Stopping answers everything handed over first.
        syncer.stop();
        rx.try_iter().collect()
    }

    #[test]
    fn groups_are_answered_in_order_once_the_log_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        std::fs::write(dir.path().join("queue.sqlite3-wal"), b"frames").unwrap();
        assert_eq!(three_groups(&db), [(0, None), (1, None), (2, None)]);
    }

    /// A log that cannot be fsynced fails every group waiting on it, naming
    /// the file, instead of answering it as durable.
    #[test]
    fn a_failed_fsync_fails_the_groups_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let got = three_groups(&dir.path().join("gone.sqlite3"));
        assert_eq!(got.len(), 3);
        for (i, (n, e)) in got.into_iter().enumerate() {
            assert_eq!(n, i);
            let e = e.expect("an error");
            assert!(
                e.starts_with("cannot fsync ") && e.contains("gone.sqlite3-wal"),
                "{e}"
            );
        }
    }
}

//! The hosts running on one data directory: each writes a run file saying
//! what it serves, and holds an exclusive lock on a lock file beside it for
//! as long as it lives. `host status` lists the run files whose lock is
//! held; `host reload` signals only those. The run file names the host's
//! registry id ([`host_id`]): it is the disk backend's registration, and
//! a lease whose holder no live run file names is reclaimed at once
//! (`queue/disk/hosts.rs`).
//!
//! The lock, not the process id, says whether a host is alive: a stale run
//! file whose pid was reused by an unrelated process is never signalled
//! (SIGHUP would terminate it), and a file naming pid 0 or 1 (the caller's
//! process group, init) is never acted on at all.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::plugin::swap::HotSwap;

/// Directory of run files: one per running host, for `status` and `reload`.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

/// What a running host says about itself in its run file: the registry's
/// [`HostInfo`](crate::queue::HostInfo).
pub use crate::queue::hosts::{HostInfo as RunInfo, HostPlugin as RunPlugin};

/// Reads how many workers of a pool are busy and its most, for the run file.
pub type WorkerGauge = Arc<dyn Fn() -> (usize, usize) + Send + Sync>;

/// This host's entry in the registry: its run file and the lock that says
/// it is alive.
pub struct RunFile {
    path: PathBuf,
    lock_path: PathBuf,
    queues: Vec<String>,
    /// Who this host is: id, machine, start time, data directory.
    me: RunInfo,
    /// Busy and most workers per slot, once its pool runs.
    gauges: std::sync::Mutex<Vec<Option<WorkerGauge>>>,
    /// Held (flock, exclusive) until the process ends or `remove` runs.
    _lock: File,
    /// One writer at a time: two would share the temporary file.
    writing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for RunFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunFile")
            .field("path", &self.path)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl RunFile {
    /// Registers this process; `queues[i]` is the queue of the `i`-th slot
    /// later given to `write`.
    pub fn create(data_dir: &Path, queues: Vec<String>) -> Result<Arc<Self>> {
        let dir = run_dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pid = std::process::id();
        let lock_path = dir.join(format!("{pid}.lock"));
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        if !try_lock(&lock)? {
            anyhow::bail!(
                "{} is locked by another process with this pid (a container sharing the data directory?)",
                lock_path.display()
            );
        }
        let machine = machine_name();
        let me = RunInfo {
            id: host_id(&machine, pid),
            machine,
            pid,
            started_at_ms: crate::clock::system().now_ms(),
            data_dir: Some(std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned())),
            ..RunInfo::default()
        };
        Ok(Arc::new(Self {
            path: dir.join(format!("{pid}.json")),
            lock_path,
            gauges: std::sync::Mutex::new(vec![None; queues.len()]),
            queues,
            me,
            _lock: lock,
            writing: std::sync::Mutex::new(()),
        }))
    }

    /// Rewrites the run file from the slots' current state.
    pub fn write(&self, slots: &[Arc<dyn HotSwap>]) {
        self.write_info(&self.info(slots));
    }

    /// This host's id: leases it takes name it as their holder.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// Lets the run file show slot `i`'s busy and most workers.
    pub fn set_gauge(&self, i: usize, gauge: WorkerGauge) {
        if let Some(g) = crate::queue::util::lock(&self.gauges).get_mut(i) {
            *g = Some(gauge);
        }
    }

    /// What the run file says now (with a fresh heartbeat time).
    pub fn info(&self, slots: &[Arc<dyn HotSwap>]) -> RunInfo {
        let gauges = crate::queue::util::lock(&self.gauges).clone();
        RunInfo {
            last_heartbeat_ms: crate::clock::system().now_ms(),
            plugins: slots
                .iter()
                .zip(&self.queues)
                .enumerate()
                .map(|(i, (s, q))| {
                    let (busy_workers, max_workers) = gauges
                        .get(i)
                        .and_then(|g| g.as_ref().map(|g| g()))
                        .unwrap_or_default();
                    RunPlugin {
                        name: s.spec().name.clone(),
                        queue: q.clone(),
                        path: s.spec().path.clone(),
                        version: s.version(),
                        batches_by_version: s.batches_by_version(),
                        busy_workers,
                        max_workers,
                    }
                })
                .collect(),
            ..self.me.clone()
        }
    }

    /// Replaces the run file atomically (a reader never sees half of it).
    pub fn write_info(&self, info: &RunInfo) {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.path.with_extension("tmp");
        let result = serde_json::to_vec_pretty(info)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write run file");
        }
    }

    /// Leaves the registry (the lock goes with the process).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Run files of hosts alive on this data directory; stale ones are removed.
pub fn live_hosts(data_dir: &Path) -> Vec<RunInfo> {
    let mut out = Vec::new();
    for path in run_files(data_dir) {
        let named: Option<u32> = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok());
        let Some(pid) = named.filter(|p| *p > 1) else {
            continue;
        };
        match liveness(&path.with_extension("lock")) {
            Liveness::Alive => {}
            Liveness::Unknown => continue,
            Liveness::Gone => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("lock"));
                continue;
            }
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // A file whose pid is not its name's was not written by that host.
        match serde_json::from_str::<RunInfo>(&text) {
            Ok(info) if info.pid == pid => out.push(info),
            _ => {}
        }
    }
    out.sort_by_key(|i| i.pid);
    out
}

/// The run files (`*.json`) in `data_dir`'s registry; none where it cannot
/// be read.
fn run_files(data_dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(run_dir(data_dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
}

/// Whether the lock of the run file naming host `id` is free; `None` when
/// no run file in `data_dir` names it.
fn named_host_gone(data_dir: &Path, id: &str) -> Option<bool> {
    run_files(data_dir)
        .find(|path| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<RunInfo>(&t).ok())
                .is_some_and(|i| i.id == id)
        })
        .map(|path| matches!(liveness(&path.with_extension("lock")), Liveness::Gone))
}

/// Whether the host with this id, registered on `data_dir`, is provably
/// gone: no run file of a live host there names it. A host writes its run
/// file (holding its lock) before it takes any lease and removes it only
/// after its pools stopped, so a holder without one is gone. A run file
/// whose lock cannot be checked (another user's host) counts as alive.
pub fn holder_gone(data_dir: &Path, id: &str) -> bool {
    named_host_gone(data_dir, id).unwrap_or(true)
}

/// Whether a run file in `data_dir` names host `id` and its lock is free:
/// positive proof that the host, which registered elsewhere too (Redis),
/// is gone. A missing run file proves nothing here.
pub fn run_file_released(data_dir: &Path, id: &str) -> bool {
    named_host_gone(data_dir, id).unwrap_or(false)
}

/// The machine's host name, or `unknown` when it cannot be read.
pub fn machine_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let name = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "unknown".into()
}

/// A host id unique across machines and restarts: `<machine>-<pid>-<random>`,
/// limited to characters every backend's key names take (no `@`, braces or
/// spaces).
pub fn host_id(machine: &str, pid: u32) -> String {
    let clean: String = machine
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{clean}-{pid}-{:08x}", fastrand::u32(..))
}

enum Liveness {
    Alive,
    Gone,
    /// The lock file cannot be opened (another user's host): neither
    /// listed nor removed.
    Unknown,
}

fn liveness(lock_path: &Path) -> Liveness {
    let file = match File::open(lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Liveness::Gone,
        Err(_) => return Liveness::Unknown,
    };
    match try_lock(&file) {
        // Nobody held it: the host that made it is gone (dropping `file`
        // releases the lock again).
        Ok(true) => Liveness::Gone,
        Ok(false) => Liveness::Alive,
        Err(_) => Liveness::Unknown,
    }
}

/// Takes an exclusive flock without waiting; false if another holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this File owns for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

/// Sends SIGHUP to a host listed by [`live_hosts`], asking it to reload.
pub fn signal_reload(host: &RunInfo) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(host.pid)
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| std::io::Error::other(format!("refusing to signal pid {}", host.pid)))?;
        // SAFETY: plain kill(2) with a valid signal number and a pid > 1.
        if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(unix))]
    {
        let _ = host;
        Err(std::io::Error::other("reload by signal needs unix"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_info(dir: &Path, name: &str, pid: u32) {
        let info = RunInfo {
            pid,
            ..RunInfo::default()
        };
        std::fs::create_dir_all(run_dir(dir)).unwrap();
        std::fs::write(run_dir(dir).join(name), serde_json::to_vec(&info).unwrap()).unwrap();
    }

    #[test]
    fn a_run_file_without_its_lock_is_stale_even_when_its_pid_lives() {
        let dir = tempfile::tempdir().unwrap();
        // This test's own pid: alive, but no host holds the lock. Before
        // locks, `host reload` would have sent SIGHUP to this process.
        let me = std::process::id();
        write_info(dir.path(), &format!("{me}.json"), me);
        assert!(live_hosts(dir.path()).is_empty());
        assert!(!run_dir(dir.path()).join(format!("{me}.json")).exists());
    }

    #[test]
    fn pid_zero_one_and_mismatched_files_are_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        write_info(dir.path(), "0.json", 0);
        write_info(dir.path(), "1.json", 1);
        let host = RunFile::create(dir.path(), Vec::new()).unwrap();
        host.write(&[]);
        // A file naming another pid than its own name, beside a held lock.
        let me = std::process::id();
        std::fs::write(
            run_dir(dir.path()).join(format!("{me}.json")),
            br#"{"pid": 0, "plugins": []}"#,
        )
        .unwrap();
        assert!(live_hosts(dir.path()).is_empty());
        assert!(
            signal_reload(&RunInfo {
                pid: 0,
                ..RunInfo::default()
            })
            .is_err()
        );
        assert!(
            signal_reload(&RunInfo {
                pid: 1,
                ..RunInfo::default()
            })
            .is_err()
        );
    }

    #[test]
    fn a_live_host_is_listed_while_it_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let host = RunFile::create(dir.path(), Vec::new()).unwrap();
        host.write(&[]);
        let live = live_hosts(dir.path());
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].pid, std::process::id());
        host.remove();
        drop(host);
        assert!(live_hosts(dir.path()).is_empty());
    }
}

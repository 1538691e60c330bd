//! Throwaway services for tests and benchmarks: a private `redis-server`.
//!
//! Tests and `host bench` never touch the machine's default Redis: each
//! [`RedisServer`] runs its own process on a free loopback port with its
//! data in a temporary directory, and is killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A `redis-server` process owned by this process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Starts a server; with `aof`, every write is fsynced to an append-only
    /// file before it is answered, so a restart keeps all of it.
    pub fn start_with(aof: bool) -> Result<Self> {
        let mut last = None;
        // Another process may take the free port between our probe and the
        // server's bind; try a few ports.
        for _ in 0..5 {
            let port = free_port()?;
            let mut s = Self {
                port,
                dir: tempfile::tempdir().context("creating a directory for redis-server")?,
                aof,
                child: None,
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", &log_file(self.dir.path()).to_string_lossy()])
            .args(["--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            // fsync every write: a kill then loses nothing acknowledged.
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        let mut child = cmd
            .spawn()
            .context("starting redis-server (is it installed? apt-get install redis-server)")?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(log_file(self.dir.path())).unwrap_or_default();
                bail!("redis-server exited with {status}: {log}");
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-server on port {} did not answer within 30s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Sends one command over a fresh connection; returns the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        // Replies used here are single bulk strings or simple lines: read
        // until the announced length has arrived.
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if complete(&out) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_file(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// True once a RESP reply (simple line or one bulk string) is complete.
fn complete(b: &[u8]) -> bool {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match b.first() {
        Some(b'$') => {
            let len: i64 = std::str::from_utf8(&b[1..eol])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            len < 0 || b.len() >= eol + 2 + len as usize + 2
        }
        _ => true,
    }
}

/// Parses `INFO` text into its `field:value` pairs.
pub fn info_fields(info: &str) -> Vec<(String, String)> {
    info.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('$'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

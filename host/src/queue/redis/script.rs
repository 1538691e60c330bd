//! Script plumbing: the Lua programs (one `.lua` file each, in `scripts/`),
//! calling them by hash, reloading them after a Redis restart, retrying the
//! idempotent ones, and reading their replies.

use std::time::Duration;

use redis::{Script, Value};

use super::Shared;
use crate::backoff::Backoff;
use crate::queue::QueueError;

/// Lua helpers prepended to the scripts that use them.
const HELPERS: &str = include_str!("scripts/helpers.lua");

/// The scripts, hashed once per store.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) push: Script,
    pub(super) lease: Script,
    pub(super) renew: Script,
    pub(super) settle: Script,
    pub(super) stats: Script,
    pub(super) reclaim: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_helpers = |body: &str| Script::new(&format!("{HELPERS}{body}"));
        Self {
            push: with_helpers(include_str!("scripts/push.lua")),
            lease: with_helpers(include_str!("scripts/lease.lua")),
            renew: with_helpers(include_str!("scripts/renew.lua")),
            settle: with_helpers(include_str!("scripts/settle.lua")),
            stats: Script::new(include_str!("scripts/stats.lua")),
            reclaim: with_helpers(include_str!("scripts/reclaim.lua")),
        }
    }
}

/// One script call being built: `EVALSHA <sha> 1 <prefix> <args>` in one
/// buffer (a `ScriptInvocation` allocates per argument).
pub(super) struct Call<'a> {
    script: &'a Script,
    cmd: redis::Cmd,
}

impl Call<'_> {
    pub(super) fn arg<T: redis::ToRedisArgs>(&mut self, a: T) -> &mut Self {
        self.cmd.arg(a);
        self
    }
}

impl Shared {
    /// Starts a call of `script` on the queue with key prefix `prefix`.
    pub(super) fn call<'a>(&self, script: &'a Script, prefix: &str) -> Call<'a> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(prefix);
        Call { script, cmd }
    }

    /// Runs a script call once, loading the script if Redis lost it
    /// (a restart).
    pub(super) async fn try_run(&self, call: &Call<'_>) -> redis::RedisResult<Value> {
        let mut conn = self.conn.clone();
        let r = match call.cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call.script.load_async(&mut conn).await?;
                call.cmd.query_async(&mut conn).await
            }
            r => r,
        };
        self.note_reachability(&r);
        r
    }

    /// Remembers when Redis became unreachable, and logs once, at the first
    /// answer after, how long it was gone (the failures are logged as they come).
    fn note_reachability(&self, r: &redis::RedisResult<Value>) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Err(e) if is_connection(e) => {
                outage.get_or_insert_with(std::time::Instant::now);
            }
            Err(_) | Ok(_) => {
                if let Some(since) = outage.take() {
                    let gone = since.elapsed().as_secs_f64();
                    tracing::info!(url = %self.url, "Redis reachable again after {gone:.1} s");
                }
            }
        }
    }

    /// Runs a script; one attempt.
    pub(super) async fn run(&self, call: &Call<'_>) -> Result<Value, QueueError> {
        self.try_run(call).await.map_err(|e| self.error(e))
    }

    /// Runs an idempotent script, retrying connection errors with back-off.
    pub(super) async fn run_retrying(&self, call: &Call<'_>) -> Result<Value, QueueError> {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let deadline = crate::clock::deadline_in(self.opts.retry_for);
        let mut failures = 0;
        loop {
            match self.try_run(call).await {
                Ok(v) => return Ok(v),
                Err(e) if is_connection(&e) && tokio::time::Instant::now() < deadline => {
                    failures += 1;
                    let wait = backoff.delay(failures);
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?wait, "Redis unreachable; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }
}

/// Whether an error means Redis could not be reached (worth retrying):
/// also a cluster failing over (no master for a slot yet).
pub(super) fn is_connection(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                )
        )
        || e.to_string().contains("LOADING")
}

/// An integer reply, or a number sent as a string.
pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The elements of an array reply, or the reply back when it is not one.
pub(super) fn array(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        v => Err(v),
    }
}

//! Script plumbing: the Lua programs (one `.lua` file each, in `scripts/`),
//! calling them by hash, reloading them after a Redis restart, retrying the
//! idempotent ones, and reading their replies.

use std::time::Duration;

use redis::{Script, Value};

use super::{Shared, keys};
use crate::backoff::Backoff;
use crate::queue::QueueError;

/// Lua helpers prepended to the scripts that use them.
pub(super) const HELPERS: &str = include_str!("scripts/helpers.lua");

/// A Lua program and the keys of its queue it touches, which every call
/// declares in `KEYS` in this order (the suffixes under the queue's prefix,
/// see `keys.rs`).
#[derive(Debug)]
pub(super) struct Program {
    script: Script,
    keys: &'static [&'static str],
}

impl Program {
    /// The program `body` (after `before`, helpers it uses) touching `keys`.
    ///
    /// It reads its keys from the table `K` (`K.ready`, ...) that a header
    /// builds from `KEYS`; naming one it did not declare is an error, so no
    /// script can touch a key its callers cannot see. The header also sets
    /// `WAKE`, the queue's wake channel (a channel is not a key).
    pub(super) fn new(keys: &'static [&'static str], before: &[&str], body: &str) -> Self {
        let first = keys.first().map_or(0, |k| k.len());
        let mut src = String::from("local K = setmetatable({");
        for (i, k) in keys.iter().enumerate() {
            src.push_str(&format!("{k} = KEYS[{}], ", i + 1));
        }
        src.push_str(
            "}, {__index = function(_, k) error('key ' .. k .. ' is not declared by this script') end})\n",
        );
        src.push_str(&format!(
            "local WAKE = string.sub(KEYS[1], 1, #KEYS[1] - {first}) .. '{}'\n",
            keys::WAKE
        ));
        for b in before {
            src.push_str(b);
        }
        src.push_str(body);
        Self {
            script: Script::new(&src),
            keys,
        }
    }
}

/// The scripts, hashed once per store.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) push: Program,
    pub(super) lease: Program,
    pub(super) renew: Program,
    pub(super) settle: Program,
    pub(super) stats: Program,
    pub(super) reclaim: Program,
}

impl Scripts {
    pub(super) fn new() -> Self {
        use keys::*;
        let program = |keys, body| Program::new(keys, &[HELPERS], body);
        Self {
            push: program(
                &[SEQ, READY, DELAYED, UNIQUE, HELD],
                include_str!("scripts/push.lua"),
            ),
            lease: program(
                &[READY, DELAYED, LEASED, BATCHES, SIZES, HOLDERS, HELD, BSEQ],
                include_str!("scripts/lease.lua"),
            ),
            renew: program(&[LEASED], include_str!("scripts/renew.lua")),
            settle: program(
                &[
                    LEASED, BATCHES, SIZES, HOLDERS, HELD, UNIQUE, DELAYED, READY, DEAD,
                ],
                include_str!("scripts/settle.lua"),
            ),
            stats: program(
                &[READY, DELAYED, LEASED, SIZES, HELD, DEAD],
                include_str!("scripts/stats.lua"),
            ),
            reclaim: program(
                &[HOLDERS, LEASED, BATCHES, SIZES, READY, HELD],
                include_str!("scripts/reclaim.lua"),
            ),
        }
    }
}

/// One script call being built: `EVALSHA <sha> <n> <keys> <args>` in one
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
    /// Starts a call of `program` on the queue with key prefix `prefix`,
    /// declaring each of its keys.
    pub(super) fn call<'a>(&self, program: &'a Program, prefix: &str) -> Call<'a> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(program.script.get_hash()).arg(program.keys.len());
        let mut key = String::with_capacity(prefix.len() + 8);
        for k in program.keys {
            key.clear();
            key.push_str(prefix);
            key.push_str(k);
            cmd.arg(key.as_str());
        }
        Call {
            script: &program.script,
            cmd,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use taskhost_fixtures::redis::RedisServer;

    /// Every `.lua` file of the backend, by name.
    const SOURCES: &[(&str, &str)] = &[
        ("helpers.lua", HELPERS),
        ("push.lua", include_str!("scripts/push.lua")),
        ("lease.lua", include_str!("scripts/lease.lua")),
        ("renew.lua", include_str!("scripts/renew.lua")),
        ("settle.lua", include_str!("scripts/settle.lua")),
        ("stats.lua", include_str!("scripts/stats.lua")),
        ("reclaim.lua", include_str!("scripts/reclaim.lua")),
        (
            "admin_helpers.lua",
            include_str!("scripts/admin_helpers.lua"),
        ),
        ("admin_peek.lua", include_str!("scripts/admin_peek.lua")),
        ("admin_dead.lua", include_str!("scripts/admin_dead.lua")),
        ("admin_task.lua", include_str!("scripts/admin_task.lua")),
    ];

    /// A script reaches its queue's keys only through `K`: it never reads
    /// `KEYS` itself, spells a key name, or builds one from a declared key.
    /// (`migrate.lua`, whose keys vary per call, reads `KEYS` by position.)
    #[test]
    fn scripts_name_keys_only_through_their_declared_table() {
        for (name, src) in SOURCES {
            for (n, line) in src.lines().enumerate() {
                let code = line.split("--").next().unwrap_or_default();
                let at = format!("{name}:{}: {line}", n + 1);
                assert!(!code.contains("KEYS["), "{at}");
                assert!(!code.contains("'taskhost:"), "{at}");
                let built = code.match_indices("K.").any(|(i, _)| {
                    let rest = &code[i + 2..];
                    let name_end = rest
                        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .unwrap_or(rest.len());
                    rest[name_end..].trim_start().starts_with("..")
                });
                assert!(!built, "{at}");
            }
        }
    }

    /// A script naming a key it did not declare fails with that name,
    /// instead of touching a key the cluster cannot route.
    #[tokio::test]
    async fn an_undeclared_key_is_an_error_naming_it() {
        let server = RedisServer::start().unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let p = Program::new(
            &[keys::READY],
            &[],
            "return {redis.call('LLEN', K.ready), WAKE, redis.call('LLEN', K.leased)}",
        );
        let err = p
            .script
            .key("taskhost:{q}:ready")
            .invoke_async::<Value>(&mut conn)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("key leased is not declared"),
            "{err}"
        );
        let p = Program::new(&[keys::READY], &[], "return WAKE");
        let wake: String = p
            .script
            .key("taskhost:{q}:ready")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(wake, "taskhost:{q}:wake");
    }
}

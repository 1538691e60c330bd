//! Redis backend: many hosts share one queue, with leases, unique keys,
//! delayed retries and dead letters held in Redis.
//!
//! # Layout
//!
//! Every key of queue `q` starts with `taskhost:{q}:`; the `{q}` hash tag puts
//! all of a queue's keys in one Redis Cluster slot, so each script below may
//! touch any of them (the scripts get the prefix as their one `KEYS` entry
//! and derive the rest, as BullMQ's do; they share the slot, so this holds on
//! a cluster). Needs Redis >= 6.2 (`LPOP`/`RPOP` with a count, `ZMSCORE`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `taskhost:{q}:seq` | string | last task id (`INCRBY` per push batch) |
//! | `taskhost:{q}:ready` | list | ids visible now, oldest first |
//! | `taskhost:{q}:leased` | sorted set | leased ids scored by lease expiry (ms) |
//! | `taskhost:{q}:delayed` | sorted set | delayed ids scored by visible-at (ms) |
//! | `taskhost:{q}:pay`, `att`, `enq`, `key` | hashes | id -> payload, attempt, enqueued-at ms, unique key |
//! | `taskhost:{q}:unique` | hash | unique key -> id of the pending/delayed/leased task |
//! | `taskhost:{q}:dead` | list | dead-lettered ids, newest first, trimmed |
//! | `taskhost:{q}:reason`, `failed` | hashes | id -> dead-letter reason, failed-at ms |
//! | `taskhost:queues` | set | names of queues ever pushed to (for `host status`) |
//!
//! # Why this layout
//!
//! A leased task stays in Redis (in `leased`) until its holder settles it, so a
//! host that dies loses nothing: its leases expire and the next lease call of
//! any host moves them back to `ready`. That move reads only the expired head
//! of the `leased` sorted set, bounded per call, so reclaiming never scans
//! all keys (Harbor's SCAN over `execution:id:*` is what this replaces).
//! Lists with a lease sorted set were chosen over Streams: Streams keep acked
//! entries until trimmed, have no per-entry delay, and XAUTOCLAIM walks the
//! pending list rather than jumping to what expired.
//!
//! Each state change is one Lua script, so it is atomic: push (capacity check,
//! unique-key check, id, hash, list or delayed set), lease (promote due retries
//! and expired leases, pop, count the attempt, record the lease), renew, and
//! settle (a whole batch of acks/retries/dead letters/releases in one call).
//! A settlement or renewal is applied only if the task is still in `leased`
//! with the same attempt, so a host whose lease was taken over cannot settle
//! it. Task fields live in a few per-queue hashes (one field per task)
//! rather than a hash per task, so every script reads and writes a whole
//! batch with a handful of variadic commands (`HMGET`, `HSET`, `ZADD`,
//! `ZMSCORE`, `HDEL`): Redis's cost per task is then a few hash and sorted-set
//! operations, not a command each. One host needs a handful of round trips
//! per batch, not per task.
//!
//! Times come from the store's [`Clock`] and travel as script arguments, so
//! tests drive lease expiry and retries deterministically, and hosts agree as
//! far as their wall clocks do (keep them NTP-synced; a lease TTL of many
//! seconds absorbs the usual skew).
//!
//! # Failures
//!
//! The connection is a [`ConnectionManager`]: it reconnects in the background
//! after a connection error. Errors carry the (password-free) URL and say when
//! Redis is unreachable. `renew` and `settle` are idempotent (they check the
//! attempt), so they are retried on connection errors with the shared
//! [`Backoff`] for up to [`RedisOptions::retry_for`]; lease errors are
//! backed off by the worker pool; a push error is returned to the caller, so
//! nothing acknowledged as pushed is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{
    Action, BaseQueue, DeadTask, Lease, NewTask, Pushed, QueueError, QueueStats, QueueStore,
    Settle, Settled, Task, validate_name,
};
use crate::backoff::Backoff;
use crate::clock::{self, Clock};

/// Key of the set naming every queue.
const QUEUES_KEY: &str = "taskhost:queues";

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Most tasks (pending, delayed and leased) one queue holds; unbounded when absent.
    pub capacity: Option<usize>,
    /// How long a push waits for room in a full queue before failing.
    pub push_timeout: Duration,
    /// Most dead letters kept per queue; older ones are dropped.
    pub dead_capacity: usize,
    /// Most due retries and expired leases moved back to `ready` per lease call.
    pub promote_limit: usize,
    /// How long renew and settle keep retrying through connection errors.
    pub retry_for: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one command may take before it counts as failed.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            capacity: None,
            push_timeout: Duration::from_secs(2),
            dead_capacity: 10_000,
            promote_limit: 1_000,
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// Lua helpers: `chunked` runs `cmd key` with `list` appended and `mget`
/// reads `list` with `cmd key`, both in chunks that stay under Lua's stack
/// limit for `unpack`, so one call serves a whole batch.
const HELPERS: &str = r#"
local function chunked(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
local function mget(cmd, key, list)
  local out = {}
  for i = 1, #list, 1000 do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end
"#;

/// Push: ARGV = now, capacity (0 = none), then per task: has_key, key, payload, delay_ms.
/// Returns {0} when the batch does not fit, else {1, kind1, id1, kind2, id2, ...}
/// with kind 1 = created, 0 = duplicate. Ids are reserved with one INCRBY
/// per batch; a duplicate leaves a gap.
const PUSH: &str = r#"
local pre = KEYS[1]
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local n = (#ARGV - 2) / 4
local keys = {}
for i = 0, n - 1 do
  if ARGV[3 + i * 4] == '1' then keys[#keys + 1] = ARGV[4 + i * 4] end
end
local known = {}
if #keys > 0 then
  local ids = mget('HMGET', pre .. 'unique', keys)
  for j, k in ipairs(keys) do
    if ids[j] then known[k] = tonumber(ids[j]) end
  end
end
local fresh, seen = 0, {}
for i = 0, n - 1 do
  local b = 3 + i * 4
  if ARGV[b] == '0' then
    fresh = fresh + 1
  elseif not known[ARGV[b + 1]] and not seen[ARGV[b + 1]] then
    seen[ARGV[b + 1]] = true
    fresh = fresh + 1
  end
end
if cap > 0 then
  local count = redis.call('LLEN', pre .. 'ready') + redis.call('ZCARD', pre .. 'leased')
    + redis.call('ZCARD', pre .. 'delayed')
  if count + fresh > cap then return {0} end
end
local id = redis.call('INCRBY', pre .. 'seq', fresh) - fresh
local out, pay, att, enq, key, uniq, ready, delayed = {1}, {}, {}, {}, {}, {}, {}, {}
for i = 0, n - 1 do
  local b = 3 + i * 4
  local has_key, k, payload, delay = ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
  local dup = has_key == '1' and known[k]
  if dup then
    out[#out + 1] = 0
    out[#out + 1] = dup
  else
    id = id + 1
    if has_key == '1' then
      known[k] = id
      key[#key + 1] = id
      key[#key + 1] = k
      uniq[#uniq + 1] = k
      uniq[#uniq + 1] = id
    end
    pay[#pay + 1] = id
    pay[#pay + 1] = payload
    att[#att + 1] = id
    att[#att + 1] = 0
    enq[#enq + 1] = id
    enq[#enq + 1] = now
    if delay > 0 then
      delayed[#delayed + 1] = now + delay
      delayed[#delayed + 1] = id
    else
      ready[#ready + 1] = id
    end
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
chunked('HSET', pre .. 'pay', pay)
chunked('HSET', pre .. 'att', att)
chunked('HSET', pre .. 'enq', enq)
chunked('HSET', pre .. 'key', key)
chunked('HSET', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('RPUSH', pre .. 'ready', ready)
return out
"#;

/// Lease: ARGV = now, until, max, promote_limit.
/// Returns a flat list of (id, attempt, payload, key or false, enqueued_at).
const LEASE: &str = r#"
local pre = KEYS[1]
local now, untl, max, lim = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for _, set in ipairs({'delayed', 'leased'}) do
  local due = redis.call('ZRANGEBYSCORE', pre .. set, '-inf', now, 'LIMIT', 0, lim)
  if #due > 0 then
    if #due < lim then
      -- Everything due was read, so this removes exactly those.
      redis.call('ZREMRANGEBYSCORE', pre .. set, '-inf', now)
    else
      chunked('ZREM', pre .. set, due)
    end
    chunked('RPUSH', pre .. 'ready', due)
  end
end
local ids = redis.call('LPOP', pre .. 'ready', max)
local out = {}
if not ids then return out end
local pays = mget('HMGET', pre .. 'pay', ids)
local atts = mget('HMGET', pre .. 'att', ids)
local keys = mget('HMGET', pre .. 'key', ids)
local enqs = mget('HMGET', pre .. 'enq', ids)
local att, z = {}, {}
for i, id in ipairs(ids) do
  if pays[i] then
    local a = tonumber(atts[i]) + 1
    att[#att + 1] = id
    att[#att + 1] = a
    z[#z + 1] = untl
    z[#z + 1] = id
    out[#out + 1] = tonumber(id)
    out[#out + 1] = a
    out[#out + 1] = pays[i]
    out[#out + 1] = keys[i]
    out[#out + 1] = tonumber(enqs[i])
  end
end
chunked('HSET', pre .. 'att', att)
chunked('ZADD', pre .. 'leased', z)
return out
"#;

/// Renew: ARGV = until, then pairs (id, attempt). Returns how many were held.
const RENEW: &str = r#"
local pre = KEYS[1]
local held = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('ZSCORE', pre .. 'leased', id)
     and redis.call('HGET', pre .. 'att', id) == ARGV[i + 1] then
    redis.call('ZADD', pre .. 'leased', 'XX', ARGV[1], id)
    held = held + 1
  end
end
return held
"#;

/// Settle: ARGV = now, dead_capacity, then quads (id, attempt, action, arg) with
/// action a = ack, r = retry at arg, d = dead-letter with reason arg, l = release.
/// Returns {applied, lost}. Reads and writes go out once per batch, not per
/// task. A task's unique-key entry points at it for as long as the task
/// exists, so it is removed without a check.
const SETTLE: &str = r#"
local pre = KEYS[1]
local now, deadcap = ARGV[1], tonumber(ARGV[2])
local ids = {}
for i = 3, #ARGV, 4 do ids[#ids + 1] = ARGV[i] end
local atts = mget('HMGET', pre .. 'att', ids)
local held = mget('ZMSCORE', pre .. 'leased', ids)
local keys = mget('HMGET', pre .. 'key', ids)
local applied, lost, taken = 0, 0, {}
local zrem, gone, uniq, delayed, back, dead, reasons, failed, att =
  {}, {}, {}, {}, {}, {}, {}, {}, {}
for j, id in ipairs(ids) do
  local b = 3 + (j - 1) * 4
  local act, arg = ARGV[b + 2], ARGV[b + 3]
  if held[j] and atts[j] == ARGV[b + 1] and not taken[id] then
    taken[id] = true
    applied = applied + 1
    zrem[#zrem + 1] = id
    if act == 'r' then
      delayed[#delayed + 1] = arg
      delayed[#delayed + 1] = id
    elseif act == 'l' then
      att[#att + 1] = id
      att[#att + 1] = tonumber(atts[j]) - 1
      back[#back + 1] = id
    else
      if keys[j] then uniq[#uniq + 1] = keys[j] end
      if act == 'd' then
        dead[#dead + 1] = id
        reasons[#reasons + 1] = id
        reasons[#reasons + 1] = arg
        failed[#failed + 1] = id
        failed[#failed + 1] = now
      else
        gone[#gone + 1] = id
      end
    end
  else
    lost = lost + 1
  end
end
chunked('ZREM', pre .. 'leased', zrem)
chunked('HDEL', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('HSET', pre .. 'att', att)
chunked('LPUSH', pre .. 'ready', back)
chunked('HSET', pre .. 'reason', reasons)
chunked('HSET', pre .. 'failed', failed)
chunked('LPUSH', pre .. 'dead', dead)
for _, h in ipairs({'pay', 'att', 'enq', 'key'}) do
  chunked('HDEL', pre .. h, gone)
end
local over = redis.call('LLEN', pre .. 'dead') - deadcap
if over > 0 then
  local old = redis.call('RPOP', pre .. 'dead', over)
  for _, h in ipairs({'pay', 'att', 'enq', 'key', 'reason', 'failed'}) do
    chunked('HDEL', pre .. h, old)
  end
end
return {applied, lost}
"#;

/// Stats: ARGV = now. Returns {pending, delayed, leased, dead}.
const STATS: &str = r#"
local pre = KEYS[1]
local now = ARGV[1]
local due = redis.call('ZCOUNT', pre .. 'delayed', '-inf', now)
local expired = redis.call('ZCOUNT', pre .. 'leased', '-inf', now)
return {
  redis.call('LLEN', pre .. 'ready') + due + expired,
  redis.call('ZCARD', pre .. 'delayed') - due,
  redis.call('ZCARD', pre .. 'leased') - expired,
  redis.call('LLEN', pre .. 'dead'),
}
"#;

/// Dead letters: ARGV = limit. Returns a flat list of
/// (id, attempt, payload, key or false, enqueued_at, reason, failed_at).
const DEAD: &str = r#"
local pre = KEYS[1]
local out = {}
for _, id in ipairs(redis.call('LRANGE', pre .. 'dead', 0, tonumber(ARGV[1]) - 1)) do
  local p = redis.call('HGET', pre .. 'pay', id)
  if p then
    out[#out + 1] = tonumber(id)
    out[#out + 1] = tonumber(redis.call('HGET', pre .. 'att', id))
    out[#out + 1] = p
    out[#out + 1] = redis.call('HGET', pre .. 'key', id)
    out[#out + 1] = tonumber(redis.call('HGET', pre .. 'enq', id))
    out[#out + 1] = redis.call('HGET', pre .. 'reason', id) or ''
    out[#out + 1] = tonumber(redis.call('HGET', pre .. 'failed', id) or 0)
  end
end
return out
"#;

/// The scripts, hashed once per store.
#[derive(Debug)]
struct Scripts {
    push: Script,
    lease: Script,
    renew: Script,
    settle: Script,
    stats: Script,
    dead: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            push: Script::new(&format!("{HELPERS}{PUSH}")),
            lease: Script::new(&format!("{HELPERS}{LEASE}")),
            renew: Script::new(RENEW),
            settle: Script::new(&format!("{HELPERS}{SETTLE}")),
            stats: Script::new(STATS),
            dead: Script::new(DEAD),
        }
    }
}

/// State shared by a store and its queues.
struct Shared {
    url: String,
    conn: ConnectionManager,
    opts: RedisOptions,
    clock: Arc<dyn Clock>,
    scripts: Scripts,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn error(&self, e: redis::RedisError) -> QueueError {
        let unreachable = e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout();
        QueueError::Redis {
            url: self.url.clone(),
            message: if unreachable {
                format!("Redis is unreachable: {e}")
            } else {
                e.to_string()
            },
        }
    }

    /// Runs a script; one attempt.
    async fn run(&self, inv: &redis::ScriptInvocation<'_>) -> Result<Value, QueueError> {
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(|e| self.error(e))
    }

    /// Runs an idempotent script, retrying connection errors with back-off.
    async fn run_retrying(&self, inv: &redis::ScriptInvocation<'_>) -> Result<Value, QueueError> {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + self.opts.retry_for;
        let mut failures = 0;
        loop {
            let mut conn = self.conn.clone();
            match inv.invoke_async(&mut conn).await {
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

fn is_connection(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.to_string().contains("LOADING")
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Named queues in one Redis database.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
    queues: Mutex<HashMap<String, Arc<RedisQueue>>>,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`); connects lazily.
    ///
    /// Must be called inside a tokio runtime: the connection manager runs
    /// its reconnects there.
    pub fn open(url: &str, opts: RedisOptions, clock: Arc<dyn Clock>) -> Result<Self, QueueError> {
        let shown = redact(url);
        let bad = |e: redis::RedisError| QueueError::Config(format!("queue URL {shown}: {e}"));
        if opts.promote_limit == 0 || opts.dead_capacity == 0 {
            return Err(QueueError::Config(
                "redis promote_limit and dead_capacity must be at least 1".into(),
            ));
        }
        let client = redis::Client::open(url).map_err(bad)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(bad)?;
        Ok(Self {
            shared: Arc::new(Shared {
                url: shown,
                conn,
                opts,
                clock,
                scripts: Scripts::new(),
            }),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Checks that Redis answers (PING), naming the URL when it does not.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.shared.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.shared.url
    }
}

#[async_trait]
impl QueueStore for RedisStore {
    fn queue(&self, name: &str) -> Result<Arc<dyn BaseQueue>, QueueError> {
        validate_name(name)?;
        if name.contains(['{', '}']) {
            return Err(QueueError::Config(format!(
                "queue name {name:?}: the redis backend uses {{ }} as its hash tag; pick a name without braces"
            )));
        }
        let mut qs = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = qs.get(name) {
            return Ok(q.clone());
        }
        let q = Arc::new(RedisQueue {
            name: name.into(),
            prefix: format!("taskhost:{{{name}}}:"),
            shared: self.shared.clone(),
            registered: AtomicBool::new(false),
        });
        qs.insert(name.to_owned(), q.clone());
        Ok(q)
    }

    async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.shared.conn.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(QUEUES_KEY)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        names.sort();
        Ok(names)
    }
}

/// One named queue in Redis.
#[derive(Debug)]
pub struct RedisQueue {
    name: Arc<str>,
    prefix: String,
    shared: Arc<Shared>,
    registered: AtomicBool,
}

impl RedisQueue {
    fn bad_reply(&self, what: &str, v: &Value) -> QueueError {
        QueueError::Redis {
            url: self.shared.url.clone(),
            message: format!("unexpected reply to {what} on queue {:?}: {v:?}", self.name),
        }
    }

    fn decode_task(&self, f: &[Value]) -> Option<Task> {
        Some(Task {
            id: int(&f[0])? as u64,
            queue: self.name.clone(),
            attempt: int(&f[1])? as u32,
            payload: bytes(&f[2])?,
            unique_key: match &f[3] {
                Value::Nil => None,
                v => Some(String::from_utf8_lossy(&bytes(v)?).into_owned()),
            },
            enqueued_at_ms: int(&f[4])? as u64,
        })
    }

    /// Adds the queue to the set `host status` lists; once per process.
    async fn register(&self) -> Result<(), QueueError> {
        if self.registered.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.shared.conn.clone();
        redis::cmd("SADD")
            .arg(QUEUES_KEY)
            .arg(&*self.name)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        self.registered.store(true, Ordering::Relaxed);
        Ok(())
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

#[async_trait]
impl BaseQueue for RedisQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Pushed>, QueueError> {
        let opts = &self.shared.opts;
        if let Some(cap) = opts.capacity
            && tasks.len() > cap
        {
            return Err(QueueError::BatchTooLarge {
                queue: self.name.to_string(),
                capacity: cap,
                batch: tasks.len(),
            });
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.register().await?;
        let deadline = tokio::time::Instant::now() + opts.push_timeout;
        let poll = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let mut waits = 0;
        loop {
            let mut inv = self.shared.scripts.push.key(&self.prefix);
            inv.arg(self.shared.clock.now_ms())
                .arg(opts.capacity.unwrap_or(0));
            for t in &tasks {
                let delay = t
                    .delay
                    .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64);
                match &t.unique_key {
                    Some(k) => inv.arg("1").arg(k.as_bytes()),
                    None => inv.arg("0").arg(""),
                };
                inv.arg(t.payload.as_slice()).arg(delay);
            }
            let v = self.shared.run(&inv).await?;
            let reply = array(v.clone()).ok_or_else(|| self.bad_reply("push", &v))?;
            match reply.first().and_then(int) {
                Some(1) => {
                    return reply[1..]
                        .chunks(2)
                        .map(|c| match (int(&c[0]), c.get(1).and_then(int)) {
                            (Some(1), Some(id)) => Ok(Pushed::Created(id as u64)),
                            (Some(0), Some(id)) => Ok(Pushed::Duplicate(id as u64)),
                            _ => Err(self.bad_reply("push", &v)),
                        })
                        .collect();
                }
                Some(0) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(QueueError::Full {
                            queue: self.name.to_string(),
                            capacity: opts.capacity.unwrap_or(0),
                            waited: opts.push_timeout,
                        });
                    }
                    waits += 1;
                    tokio::time::sleep(poll.delay(waits)).await;
                }
                _ => return Err(self.bad_reply("push", &v)),
            }
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = self.shared.clock.now_ms();
        let mut inv = self.shared.scripts.lease.key(&self.prefix);
        inv.arg(now)
            .arg(clock::after(now, ttl))
            .arg(max)
            .arg(self.shared.opts.promote_limit);
        let v = self.shared.run(&inv).await?;
        let flat = array(v.clone()).ok_or_else(|| self.bad_reply("lease", &v))?;
        flat.chunks(5)
            .map(|f| {
                if f.len() < 5 {
                    return None;
                }
                self.decode_task(f)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.bad_reply("lease", &v))
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let mut inv = self.shared.scripts.renew.key(&self.prefix);
        inv.arg(clock::after(self.shared.clock.now_ms(), ttl));
        for l in leases {
            inv.arg(l.id).arg(l.attempt);
        }
        let v = self.shared.run_retrying(&inv).await?;
        int(&v)
            .map(|n| n as usize)
            .ok_or_else(|| self.bad_reply("renew", &v))
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        if settlements.is_empty() {
            return Ok(Settled::default());
        }
        let mut inv = self.shared.scripts.settle.key(&self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(self.shared.opts.dead_capacity);
        for s in &settlements {
            inv.arg(s.lease.id).arg(s.lease.attempt);
            match &s.action {
                Action::Ack => inv.arg("a").arg(""),
                Action::RetryAt(at) => inv.arg("r").arg(*at),
                Action::DeadLetter(reason) => inv.arg("d").arg(reason.as_str()),
                Action::Release => inv.arg("l").arg(""),
            };
        }
        let v = self.shared.run_retrying(&inv).await?;
        let r = array(v.clone()).ok_or_else(|| self.bad_reply("settle", &v))?;
        match (r.first().and_then(int), r.get(1).and_then(int)) {
            (Some(applied), Some(lost)) => Ok(Settled {
                applied: applied as usize,
                lost: lost as usize,
            }),
            _ => Err(self.bad_reply("settle", &v)),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut inv = self.shared.scripts.stats.key(&self.prefix);
        inv.arg(self.shared.clock.now_ms());
        let v = self.shared.run(&inv).await?;
        let r = array(v.clone()).ok_or_else(|| self.bad_reply("stats", &v))?;
        let n: Option<Vec<u64>> = r.iter().map(|x| int(x).map(|n| n as u64)).collect();
        match n.as_deref() {
            Some(&[pending, delayed, leased, dead]) => Ok(QueueStats {
                pending,
                delayed,
                leased,
                dead,
            }),
            _ => Err(self.bad_reply("stats", &v)),
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.shared.scripts.dead.key(&self.prefix);
        inv.arg(limit);
        let v = self.shared.run(&inv).await?;
        let flat = array(v.clone()).ok_or_else(|| self.bad_reply("dead letters", &v))?;
        flat.chunks(7)
            .map(|f| {
                if f.len() < 7 {
                    return None;
                }
                Some(DeadTask {
                    task: self.decode_task(&f[..5])?,
                    reason: String::from_utf8_lossy(&bytes(&f[5])?).into_owned(),
                    failed_at_ms: int(&f[6])? as u64,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.bad_reply("dead letters", &v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::settle_all;
    use crate::testing::RedisServer;

    #[tokio::test]
    async fn a_batch_settles_each_lease_once_and_dead_letters_are_trimmed() {
        let server = RedisServer::start().unwrap();
        let opts = RedisOptions {
            dead_capacity: 2,
            ..RedisOptions::default()
        };
        let store = RedisStore::open(&server.url(), opts, ManualClock::new(1_000)).unwrap();
        let q = store.queue("batch").unwrap();
        let tasks = (0..5).map(|i| NewTask::new(format!("t{i}")).unique(format!("k{i}")));
        q.push_batch(tasks.collect()).await.unwrap();
        let got = q.lease(5, Duration::from_secs(10)).await.unwrap();
        let mut s = settle_all(&[got[0].lease(), got[0].lease()], Action::Ack);
        s.extend(settle_all(
            &got[1..].iter().map(Task::lease).collect::<Vec<_>>(),
            Action::DeadLetter("no".into()),
        ));
        let done = q.settle(s).await.unwrap();
        assert_eq!(
            (done.applied, done.lost),
            (5, 1),
            "the repeated ack is refused"
        );
        let dead = q.dead_letters(10).await.unwrap();
        let ids: Vec<_> = dead.iter().map(|d| d.task.id).collect();
        assert_eq!(ids, vec![got[4].id, got[3].id], "newest two kept");
        assert_eq!(dead[0].task.unique_key.as_deref(), Some("k4"));
        assert_eq!(q.stats().await.unwrap().dead, 2);
        assert_eq!(
            store.known_queues().await.unwrap(),
            vec!["batch".to_string()]
        );
        let again = q.push(NewTask::new("x").unique("k1")).await.unwrap();
        assert!(matches!(again, Pushed::Created(_)), "a dead key is free");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}/0");
        let store = RedisStore::open(&url, RedisOptions::default(), ManualClock::new(0)).unwrap();
        let e = store.ping().await.unwrap_err().to_string();
        assert!(e.contains("unreachable") && e.contains(&url), "{e}");
        let q = store.queue("q").unwrap();
        let e = q.push(NewTask::new("x")).await.unwrap_err().to_string();
        assert!(e.contains("unreachable"), "{e}");
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("redis://user:secret@db:6379/2"),
            "redis://***@db:6379/2"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}

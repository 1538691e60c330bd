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
//! | `taskhost:{q}:t` | hash | id -> the task's immutable fields packed in one value: `<enqueued_at>:<key length or ->:<key><payload>` |
//! | `taskhost:{q}:ready` | list | visible tasks, oldest first: `id` (never leased) or `id:attempt` (attempts so far) |
//! | `taskhost:{q}:leased` | sorted set | `id:attempt` of each lease, scored by lease expiry (ms) |
//! | `taskhost:{q}:delayed` | sorted set | `id` (delayed push) or `id:attempt` (retry), scored by visible-at (ms) |
//! | `taskhost:{q}:unique` | hash | unique key -> id of the pending/delayed/leased task |
//! | `taskhost:{q}:dead` | list | `id:attempt` of dead letters, newest first, trimmed |
//! | `taskhost:{q}:reason`, `failed` | hashes | id -> dead-letter reason, failed-at ms |
//! | `taskhost:queues` | set | names of queues ever pushed to (for `host status`) |
//! | `taskhost:{q}:wake` | pub/sub channel | an empty message whenever a push or release made tasks ready |
//!
//! This layout replaced one with a hash per field (`pay`, `att`, `enq`,
//! `key`) before any release; queues written by that layout are not
//! migrated (drain them with the old binary first).
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
//! unique-key check, id, task value, list or delayed set), lease (promote due
//! retries and expired leases, pop, record the lease), renew, and settle (a
//! whole batch of acks/retries/dead letters/releases in one call).
//!
//! Redis's CPU per task is what limits throughput (one Redis core serves
//! every host), and inside a script it grows with the values moved between
//! Lua and Redis. So each task costs as few as we could make it:
//! - its immutable fields are one hash value, written once at push, read
//!   once at lease (one `HMGET` for the batch), deleted once at ack;
//! - its attempt lives in the queue elements, not in a hash: a lease is the
//!   member `id:attempt` of `leased`, so one `ZMSCORE` both proves that a
//!   settlement's holder still holds the lease and checks its attempt (a
//!   host whose lease was taken over holds an older attempt and is refused),
//!   and an expired lease or a retry goes back carrying its attempt count;
//! - every command is variadic over the batch (no `redis.call` per task),
//!   and in-batch duplicate unique keys are collapsed in Lua;
//! - the handle that leased a task remembers its unique key until it
//!   settles it, so an ack need not read the key back (an unknown key, e.g.
//!   after a restart of the handle, is read from the task value instead).
//!
//! One host needs a handful of round trips per batch, not per task.
//!
//! An idle host does not poll: its queues' `wait_for_work` waits on the
//! `wake` channel (one `PSUBSCRIBE` connection per store, started by the
//! first wait), so new work is picked up at once and an idle host costs
//! Redis nothing until work arrives. The wait keeps its time-out, so
//! retries and expired leases falling due (which publish nothing) and any
//! wake lost while the subscription was down are still found by the worker
//! pool's back-off polling.
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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

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
/// limit for `unpack`, so one call serves a whole batch. `idof` is the id
/// of a queue element (`id` or `id:attempt`); `keyof` the unique key inside
/// a packed task, or nil.
const HELPERS: &str = r#"
local function chunked(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
local function mget(cmd, key, list)
  if #list <= 1000 then return redis.call(cmd, key, unpack(list)) end
  local out = {}
  for i = 1, #list, 1000 do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end
local function idof(e)
  local p = string.find(e, ':', 1, true)
  if p then return string.sub(e, 1, p - 1), tonumber(string.sub(e, p + 1)) end
  return e, 0
end
local function keyof(packed)
  local a = string.find(packed, ':', 1, true)
  local b = string.find(packed, ':', a + 1, true)
  local n = string.sub(packed, a + 1, b - 1)
  if n == '-' then return nil end
  return string.sub(packed, b + 1, b + tonumber(n))
end
"#;

/// Push: ARGV = capacity (0 = none), now, then per task: has_key, key,
/// packed task, delay_ms. Returns {0} when the batch does not fit, else
/// {1, first_id, i1, id1, i2, id2, ...}: created tasks get consecutive ids
/// from first_id in batch order, and task i (0-based) of each pair is a
/// duplicate of the existing task id. Ids are reserved with one INCRBY per
/// batch.
const PUSH: &str = r#"
local pre = KEYS[1]
local cap, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local keys = {}
for b = 3, #ARGV, 4 do
  if ARGV[b] == '1' then keys[#keys + 1] = ARGV[b + 1] end
end
local known = {}
if #keys > 0 then
  local ids = mget('HMGET', pre .. 'unique', keys)
  for j, k in ipairs(keys) do
    if ids[j] then known[k] = ids[j] end
  end
end
local fresh, seen = 0, {}
for b = 3, #ARGV, 4 do
  if ARGV[b] == '0' then
    fresh = fresh + 1
  else
    local k = ARGV[b + 1]
    if not known[k] and not seen[k] then
      seen[k] = true
      fresh = fresh + 1
    end
  end
end
if cap > 0 then
  local count = redis.call('LLEN', pre .. 'ready') + redis.call('ZCARD', pre .. 'leased')
    + redis.call('ZCARD', pre .. 'delayed')
  if count + fresh > cap then return {0} end
end
local id = redis.call('INCRBY', pre .. 'seq', fresh) - fresh
local out, t, uniq, ready, delayed = {1, id + 1}, {}, {}, {}, {}
for b = 3, #ARGV, 4 do
  local keyed, k = ARGV[b] == '1', ARGV[b + 1]
  local dup = keyed and known[k]
  if dup then
    out[#out + 1] = (b - 3) / 4
    out[#out + 1] = dup
  else
    id = id + 1
    if keyed then
      known[k] = id
      uniq[#uniq + 1] = k
      uniq[#uniq + 1] = id
    end
    t[#t + 1] = id
    t[#t + 1] = ARGV[b + 2]
    local delay = tonumber(ARGV[b + 3])
    if delay > 0 then
      delayed[#delayed + 1] = now + delay
      delayed[#delayed + 1] = id
    else
      ready[#ready + 1] = id
    end
  end
end
chunked('HSET', pre .. 't', t)
chunked('HSET', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('RPUSH', pre .. 'ready', ready)
-- Idle hosts wait on this channel instead of polling.
if #ready > 0 then redis.call('PUBLISH', pre .. 'wake', '') end
return out
"#;

/// Lease: ARGV = now, until, max, promote_limit.
/// Returns a flat list of (`id:attempt`, packed task).
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
local got = redis.call('LPOP', pre .. 'ready', max)
if not got then return {} end
local ids, att = {}, {}
for i, e in ipairs(got) do
  ids[i], att[i] = idof(e)
end
local packed = mget('HMGET', pre .. 't', ids)
local out, z = {}, {}
for i, id in ipairs(ids) do
  if packed[i] then
    local m = id .. ':' .. (att[i] + 1)
    z[#z + 1] = untl
    z[#z + 1] = m
    out[#out + 1] = m
    out[#out + 1] = packed[i]
  end
end
chunked('ZADD', pre .. 'leased', z)
return out
"#;

/// Renew: ARGV = until, then `id:attempt` members. Returns how many were held.
const RENEW: &str = r#"
local pre = KEYS[1]
local members = {}
for i = 2, #ARGV do members[#members + 1] = ARGV[i] end
local held = mget('ZMSCORE', pre .. 'leased', members)
local z = {}
for i, m in ipairs(members) do
  if held[i] then
    z[#z + 1] = ARGV[1]
    z[#z + 1] = m
  end
end
chunked('ZADD', pre .. 'leased', z)
return #z / 2
"#;

/// Settle: ARGV = now, dead_capacity, then per settlement: `id:attempt`,
/// op, key. Op is `a<kind>` ack, `d<kind><reason>` dead-letter, `r<at ms>`
/// retry, `l` release; kind 0 = no unique key, 1 = the key is the third
/// field, ? = unknown to the caller (read from the task). Three fields per
/// task, not six: each argument costs Redis a parse and a Lua string.
/// Returns {applied, lost}. A task's unique-key entry points at it for as
/// long as the task exists, so it is removed without a check.
const SETTLE: &str = r#"
local pre = KEYS[1]
local now, deadcap = ARGV[1], tonumber(ARGV[2])
local members = {}
for b = 3, #ARGV, 3 do members[#members + 1] = ARGV[b] end
local held = mget('ZMSCORE', pre .. 'leased', members)
local applied, lost, taken = 0, 0, {}
local zrem, gone, uniq, lookup, delayed, back, dead, reasons, failed =
  {}, {}, {}, {}, {}, {}, {}, {}, {}
for j, m in ipairs(members) do
  local b = 3 + (j - 1) * 3
  if held[j] and not taken[m] then
    taken[m] = true
    applied = applied + 1
    zrem[#zrem + 1] = m
    local op = ARGV[b + 1]
    local act = string.byte(op, 1)
    if act == 114 then -- r
      delayed[#delayed + 1] = string.sub(op, 2)
      delayed[#delayed + 1] = m
    elseif act == 108 then -- l
      local id, a = idof(m)
      back[#back + 1] = a > 1 and (id .. ':' .. (a - 1)) or id
    else -- a or d
      local id = string.sub(m, 1, string.find(m, ':', 1, true) - 1)
      local kind = string.byte(op, 2)
      if kind == 49 then -- 1
        uniq[#uniq + 1] = ARGV[b + 2]
      elseif kind == 63 then -- ?
        lookup[#lookup + 1] = id
      end
      if act == 100 then -- d
        dead[#dead + 1] = m
        reasons[#reasons + 1] = id
        reasons[#reasons + 1] = string.sub(op, 3)
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
if #lookup > 0 then
  for _, p in ipairs(mget('HMGET', pre .. 't', lookup)) do
    local k = p and keyof(p)
    if k then uniq[#uniq + 1] = k end
  end
end
chunked('ZREM', pre .. 'leased', zrem)
chunked('HDEL', pre .. 't', gone)
chunked('HDEL', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('LPUSH', pre .. 'ready', back)
if #back > 0 then redis.call('PUBLISH', pre .. 'wake', '') end
if #dead > 0 then
  chunked('HSET', pre .. 'reason', reasons)
  chunked('HSET', pre .. 'failed', failed)
  chunked('LPUSH', pre .. 'dead', dead)
  local over = redis.call('LLEN', pre .. 'dead') - deadcap
  if over > 0 then
    local old = {}
    for i, e in ipairs(redis.call('RPOP', pre .. 'dead', over)) do old[i] = idof(e) end
    for _, h in ipairs({'t', 'reason', 'failed'}) do
      chunked('HDEL', pre .. h, old)
    end
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
/// (`id:attempt`, packed task, reason, failed_at).
const DEAD: &str = r#"
local pre = KEYS[1]
local out = {}
for _, e in ipairs(redis.call('LRANGE', pre .. 'dead', 0, tonumber(ARGV[1]) - 1)) do
  local id = idof(e)
  local p = redis.call('HGET', pre .. 't', id)
  if p then
    out[#out + 1] = e
    out[#out + 1] = p
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
            renew: Script::new(&format!("{HELPERS}{RENEW}")),
            settle: Script::new(&format!("{HELPERS}{SETTLE}")),
            stats: Script::new(STATS),
            dead: Script::new(&format!("{HELPERS}{DEAD}")),
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
    client: redis::Client,
    /// Per queue name: woken when Redis says work arrived.
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
    listener: Mutex<Option<Listener>>,
    listening: watch::Sender<bool>,
}

/// The task listening for wake-ups on Redis (started by the first wait).
struct Listener {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Channels the push and settle scripts publish to when tasks become ready.
const WAKE_PATTERN: &str = "taskhost:{*}:wake";

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The wake-up of queue `name`.
    fn wake_of(&self, name: &str) -> Arc<Notify> {
        self.wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Starts the wake-up listener unless it runs.
    fn ensure_listening(self: &Arc<Self>) {
        let mut l = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(listen(Arc::downgrade(self), stop.clone()));
        *l = Some(Listener { stop, task });
    }

    fn wake_all(&self) {
        for n in self
            .wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            n.notify_one();
        }
    }

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

    /// Starts a call of `script` on the queue with key prefix `prefix`.
    fn call<'a>(&self, script: &'a Script, prefix: &str) -> Call<'a> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(prefix);
        Call { script, cmd }
    }

    /// Runs a script call once, loading the script if Redis lost it
    /// (a restart).
    async fn try_run(&self, call: &Call<'_>) -> redis::RedisResult<Value> {
        let mut conn = self.conn.clone();
        match call.cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call.script.load_async(&mut conn).await?;
                call.cmd.query_async(&mut conn).await
            }
            r => r,
        }
    }

    /// Runs a script; one attempt.
    async fn run(&self, call: &Call<'_>) -> Result<Value, QueueError> {
        self.try_run(call).await.map_err(|e| self.error(e))
    }

    /// Runs an idempotent script, retrying connection errors with back-off.
    async fn run_retrying(&self, call: &Call<'_>) -> Result<Value, QueueError> {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + self.opts.retry_for;
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

/// One script call being built: `EVALSHA <sha> 1 <prefix> <args>` in one
/// buffer (a `ScriptInvocation` allocates per argument).
struct Call<'a> {
    script: &'a Script,
    cmd: redis::Cmd,
}

impl Call<'_> {
    fn arg<T: redis::ToRedisArgs>(&mut self, a: T) -> &mut Self {
        self.cmd.arg(a);
        self
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

/// Subscribes to every queue's wake channel and wakes its waiter on each
/// message. Resubscribes with back-off after a lost connection; meanwhile
/// waiters fall back to their time-outs (the worker pool's polling), so a
/// lost wake-up only delays, never loses, work.
async fn listen(shared: Weak<Shared>, stop: CancellationToken) {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failures = 0u32;
    loop {
        let Some((client, timeout)) = shared
            .upgrade()
            .map(|s| (s.client.clone(), s.opts.connect_timeout))
        else {
            return;
        };
        let connect = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(WAKE_PATTERN).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(timeout, connect) => r,
        };
        match connected {
            Ok(Ok(mut ps)) => {
                failures = 0;
                if let Some(s) = shared.upgrade() {
                    s.listening.send_replace(true);
                    // Whatever arrived while nobody listened: look again.
                    s.wake_all();
                }
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Some(s) = shared.upgrade() else { return };
                    let channel = msg.get_channel_name();
                    if let Some(name) = channel
                        .strip_prefix("taskhost:{")
                        .and_then(|c| c.strip_suffix("}:wake"))
                    {
                        s.wake_of(name).notify_one();
                    }
                }
                if let Some(s) = shared.upgrade() {
                    s.listening.send_replace(false);
                }
            }
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "redis wake-up listener cannot subscribe; waiters poll meanwhile");
            }
            Err(_) => failures = failures.saturating_add(1),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.delay(failures.max(1))) => {}
        }
    }
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
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg).map_err(bad)?;
        Ok(Self {
            shared: Arc::new(Shared {
                url: shown,
                conn,
                opts,
                clock,
                scripts: Scripts::new(),
                client,
                wakes: Mutex::new(HashMap::new()),
                listener: Mutex::new(None),
                listening: watch::channel(false).0,
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

    /// Whether the wake-up listener is subscribed (starts it if needed).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.shared.ensure_listening();
        self.shared.listening.subscribe()
    }

    /// Stops the wake-up listener and waits for it.
    pub async fn close(&self) {
        let listener = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(l) = listener {
            l.stop.cancel();
            let _ = l.task.await;
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Queue handles may outlive the store; the listener must not.
        if let Some(l) = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            l.stop.cancel();
        }
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
            wake: self.shared.wake_of(name),
            name: name.into(),
            prefix: format!("taskhost:{{{name}}}:"),
            shared: self.shared.clone(),
            registered: AtomicBool::new(false),
            keys: Mutex::new(HashMap::new()),
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
    /// Unique key (or none) of each task this handle leased and has not
    /// settled yet, so settle need not read it back from Redis.
    keys: Mutex<HashMap<u64, Option<String>>>,
    /// Woken by the store's listener when a push or release on any host
    /// made tasks ready here.
    wake: Arc<Notify>,
}

/// Most entries [`RedisQueue::keys`] keeps; leases never settled through
/// this handle (a holder that gave up) would otherwise pile up. Clearing it
/// costs only speed: settle then reads the keys from Redis.
const KEYS_LIMIT: usize = 100_000;

/// `id:attempt`, the member of a lease in `leased`, without allocating.
struct Member {
    buf: [u8; 32],
    len: usize,
}

impl Member {
    fn new(id: u64, attempt: u32) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 32];
        let mut w = &mut buf[..];
        // 20 + 1 + 10 digits always fit in 32 bytes.
        let _ = write!(w, "{id}:{attempt}");
        let len = 32 - w.len();
        Self { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A task's immutable fields as one hash value:
/// `<enqueued_at>:<key length or ->:<key><payload>`.
fn pack(enqueued_at: u64, key: Option<&str>, payload: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut v = Vec::with_capacity(payload.len() + key.map_or(0, str::len) + 24);
    let _ = match key {
        Some(k) => write!(v, "{enqueued_at}:{}:{k}", k.len()),
        None => write!(v, "{enqueued_at}:-:"),
    };
    v.extend_from_slice(payload);
    v
}

/// Splits `id:attempt`.
fn parse_member(m: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(m).ok()?;
    let (id, att) = s.split_once(':')?;
    Some((id.parse().ok()?, att.parse().ok()?))
}

/// The reverse of [`pack`]: (enqueued_at, key, payload), reusing the
/// buffer for the payload.
fn unpack(mut v: Vec<u8>) -> Option<(u64, Option<String>, Vec<u8>)> {
    let a = v.iter().position(|&b| b == b':')?;
    let b = a + 1 + v[a + 1..].iter().position(|&b| b == b':')?;
    let enq = std::str::from_utf8(&v[..a]).ok()?.parse().ok()?;
    let (key, start) = match &v[a + 1..b] {
        b"-" => (None, b + 1),
        n => {
            let n: usize = std::str::from_utf8(n).ok()?.parse().ok()?;
            let end = (b + 1).checked_add(n)?;
            let k = v.get(b + 1..end)?;
            (Some(String::from_utf8(k.to_vec()).ok()?), end)
        }
    };
    v.drain(..start);
    Some((enq, key, v))
}

impl RedisQueue {
    fn bad_reply(&self, what: &str, v: &Value) -> QueueError {
        QueueError::Redis {
            url: self.shared.url.clone(),
            message: format!("unexpected reply to {what} on queue {:?}: {v:?}", self.name),
        }
    }

    /// A task from its `id:attempt` and packed fields.
    fn decode_task(&self, member: &Value, packed: Value) -> Option<Task> {
        let Value::BulkString(m) = member else {
            return None;
        };
        let (id, attempt) = parse_member(m)?;
        let Value::BulkString(p) = packed else {
            return None;
        };
        let (enqueued_at_ms, unique_key, payload) = unpack(p)?;
        Some(Task {
            id,
            queue: self.name.clone(),
            attempt,
            payload,
            unique_key,
            enqueued_at_ms,
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<String>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
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

/// The elements of an array reply, or the reply back when it is not one.
fn array(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        v => Err(v),
    }
}

#[async_trait]
impl BaseQueue for RedisQueue {
    async fn wait_for_work(&self, timeout: Duration) {
        self.shared.ensure_listening();
        // A wake that came while nobody waited is kept (one permit), so a
        // push between a failed lease and this wait is not missed.
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

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
            let now = self.shared.clock.now_ms();
            let mut inv = self.shared.call(&self.shared.scripts.push, &self.prefix);
            inv.arg(opts.capacity.unwrap_or(0)).arg(now);
            for t in &tasks {
                let delay = t
                    .delay
                    .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64);
                match &t.unique_key {
                    Some(k) => inv.arg("1").arg(k.as_bytes()),
                    None => inv.arg("0").arg(""),
                };
                inv.arg(pack(now, t.unique_key.as_deref(), &t.payload))
                    .arg(delay);
            }
            let v = self.shared.run(&inv).await?;
            let reply = array(v).map_err(|v| self.bad_reply("push", &v))?;
            match reply.first().and_then(int) {
                Some(1) => {
                    return self
                        .pushed(tasks.len(), &reply)
                        .ok_or_else(|| self.bad_reply("push", &Value::Array(reply)));
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
                _ => return Err(self.bad_reply("push", &Value::Array(reply))),
            }
        }
    }

    async fn lease(&self, max: usize, ttl: Duration) -> Result<Vec<Task>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = self.shared.clock.now_ms();
        let mut inv = self.shared.call(&self.shared.scripts.lease, &self.prefix);
        inv.arg(now)
            .arg(clock::after(now, ttl))
            .arg(max)
            .arg(self.shared.opts.promote_limit);
        let v = self.shared.run(&inv).await?;
        let flat = array(v).map_err(|v| self.bad_reply("lease", &v))?;
        if flat.len() % 2 != 0 {
            return Err(self.bad_reply("lease", &Value::Array(flat)));
        }
        let mut tasks = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(m), Some(p)) = (it.next(), it.next()) {
            match self.decode_task(&m, p) {
                Some(t) => tasks.push(t),
                None => return Err(self.bad_reply("lease", &m)),
            }
        }
        let mut keys = self.keys();
        if keys.len() + tasks.len() > KEYS_LIMIT {
            keys.clear();
        }
        for t in &tasks {
            keys.insert(t.id, t.unique_key.clone());
        }
        Ok(tasks)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let mut inv = self.shared.call(&self.shared.scripts.renew, &self.prefix);
        inv.arg(clock::after(self.shared.clock.now_ms(), ttl));
        for l in leases {
            inv.arg(Member::new(l.id, l.attempt).bytes());
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
        let mut inv = self.shared.call(&self.shared.scripts.settle, &self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(self.shared.opts.dead_capacity);
        {
            let mut keys = self.keys();
            for s in &settlements {
                let id = s.lease.id;
                inv.arg(Member::new(id, s.lease.attempt).bytes());
                // Only acks and dead letters free the key; the entry stays
                // for a task that will be leased again.
                let key = match s.action {
                    Action::Ack | Action::DeadLetter(_) => keys.remove(&id),
                    Action::RetryAt(_) | Action::Release => None,
                };
                let (ack, kind, key) = match &key {
                    Some(Some(k)) => ("a1", "1", k.as_str()),
                    Some(None) => ("a0", "0", ""),
                    None => ("a?", "?", ""),
                };
                match &s.action {
                    Action::Ack => inv.arg(ack),
                    Action::DeadLetter(reason) => inv.arg(format!("d{kind}{reason}")),
                    Action::RetryAt(at) => inv.arg(format!("r{at}")),
                    Action::Release => inv.arg("l"),
                };
                inv.arg(key);
            }
        }
        let v = self.shared.run_retrying(&inv).await?;
        match &v {
            Value::Array(r) => match (r.first().and_then(int), r.get(1).and_then(int)) {
                (Some(applied), Some(lost)) => Ok(Settled {
                    applied: applied as usize,
                    lost: lost as usize,
                }),
                _ => Err(self.bad_reply("settle", &v)),
            },
            _ => Err(self.bad_reply("settle", &v)),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut inv = self.shared.call(&self.shared.scripts.stats, &self.prefix);
        inv.arg(self.shared.clock.now_ms());
        let v = self.shared.run(&inv).await?;
        let r = array(v).map_err(|v| self.bad_reply("stats", &v))?;
        let n: Option<Vec<u64>> = r.iter().map(|x| int(x).map(|n| n as u64)).collect();
        match n.as_deref() {
            Some(&[pending, delayed, leased, dead]) => Ok(QueueStats {
                pending,
                delayed,
                leased,
                dead,
            }),
            _ => Err(self.bad_reply("stats", &Value::Array(r))),
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.shared.call(&self.shared.scripts.dead, &self.prefix);
        inv.arg(limit);
        let v = self.shared.run(&inv).await?;
        let flat = array(v).map_err(|v| self.bad_reply("dead letters", &v))?;
        let mut out = Vec::with_capacity(flat.len() / 4);
        for f in flat.chunks(4) {
            let dead = match f {
                [m, p, reason, at] => (|| {
                    Some(DeadTask {
                        task: self.decode_task(m, p.clone())?,
                        reason: String::from_utf8_lossy(&bytes(reason)?).into_owned(),
                        failed_at_ms: int(at)? as u64,
                    })
                })(),
                _ => None,
            };
            out.push(
                dead.ok_or_else(|| self.bad_reply("dead letters", &Value::Array(f.to_vec())))?,
            );
        }
        Ok(out)
    }
}

impl RedisQueue {
    /// Push results from the script's reply `{1, first_id, i, id, ...}`.
    fn pushed(&self, n: usize, reply: &[Value]) -> Option<Vec<Pushed>> {
        let mut next = reply.get(1).and_then(int)? as u64;
        let mut dups = HashMap::new();
        for pair in reply[2..].chunks(2) {
            match pair {
                [i, id] => dups.insert(int(i)? as usize, int(id)? as u64),
                _ => return None,
            };
        }
        Some(
            (0..n)
                .map(|i| match dups.get(&i) {
                    Some(&id) => Pushed::Duplicate(id),
                    None => {
                        next += 1;
                        Pushed::Created(next - 1)
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::settle_all;
    use crate::testing::RedisServer;

    /// An idle host waiting for work is woken by another host's push (or
    /// release) through Redis, long before its time-out, and again after
    /// Redis restarted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_on_another_host_wakes_a_waiting_host() {
        const LONG: Duration = Duration::from_secs(3600);
        let mut server = RedisServer::start().unwrap();
        let open =
            || RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
        let (idle, busy) = (open(), open());
        let (waiting, pushing) = (idle.queue("jobs").unwrap(), busy.queue("jobs").unwrap());
        let mut listening = idle.listening();
        listening.wait_for(|&on| on).await.unwrap();
        let wait = |q: &Arc<dyn BaseQueue>| {
            let q = q.clone();
            tokio::spawn(async move { q.wait_for_work(LONG).await })
        };
        // The listener's first subscription wakes every waiter once (it
        // cannot know what it missed); use that permit up.
        waiting.wait_for_work(Duration::from_millis(1)).await;

        let waiter = wait(&waiting);
        pushing
            .push(NewTask::new("later").delayed(LONG))
            .await
            .unwrap();
        pushing.push(NewTask::new("now")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the push woke the waiting host")
            .unwrap();
        let leased = waiting.lease(10, LONG).await.unwrap();
        assert_eq!(leased.len(), 1, "only the ready task");

        // A release hands the task back and wakes a waiter too.
        let waiter = wait(&waiting);
        pushing
            .settle(settle_all(&[leased[0].lease()], Action::Release))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the release woke the waiting host")
            .unwrap();

        // After a Redis restart the listener subscribes again.
        server.kill();
        listening.wait_for(|&on| !on).await.unwrap();
        server.restart().unwrap();
        listening.wait_for(|&on| on).await.unwrap();
        waiting.wait_for_work(Duration::from_millis(1)).await;
        let waiter = wait(&waiting);
        // The connection manager reconnects on its own; retry the push
        // until Redis takes it.
        while pushing.push(NewTask::new("again")).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("a push after the restart woke the waiting host")
            .unwrap();
        idle.close().await;
        busy.close().await;
    }

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

    #[tokio::test]
    async fn a_handle_that_did_not_lease_a_task_still_frees_its_key() {
        let server = RedisServer::start().unwrap();
        let clock = ManualClock::new(1_000);
        let open = || RedisStore::open(&server.url(), RedisOptions::default(), clock.clone());
        let (a, b) = (open().unwrap(), open().unwrap());
        let (qa, qb) = (a.queue("q").unwrap(), b.queue("q").unwrap());
        qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
        let got = qa.lease(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got[0].unique_key.as_deref(), Some("k:1"));
        assert_eq!(qb.ack(&[got[0].lease()]).await.unwrap().applied, 1);
        let again = qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
        assert!(matches!(again, Pushed::Created(_)), "the key was freed");
    }

    #[test]
    fn packed_tasks_round_trip() {
        for key in [None, Some(""), Some("a:b:c"), Some("ключ")] {
            let v = pack(1_234, key, b"x:y\n");
            let (enq, k, p) = unpack(v).unwrap();
            assert_eq!(
                (enq, k.as_deref(), p.as_slice()),
                (1_234, key, &b"x:y\n"[..])
            );
        }
        assert_eq!(
            parse_member(Member::new(u64::MAX, u32::MAX).bytes()),
            Some((u64::MAX, u32::MAX))
        );
        assert_eq!(
            unpack(b"12:5:ab".to_vec()),
            None,
            "key longer than the value"
        );
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

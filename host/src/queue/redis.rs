//! Redis backend: many hosts share one queue, with leases, unique keys,
//! delayed retries and dead letters held in Redis.
//!
//! # Layout
//!
//! Every key of queue `q` starts with `taskhost:{q}:`; the `{q}` hash tag puts
//! all of a queue's keys in one Redis Cluster slot, so each script below may
//! touch any of them (the scripts get the prefix as their one `KEYS` entry
//! and derive the rest, as BullMQ's do; they share the slot, so this holds on
//! a cluster). Needs Redis >= 6.2 (`LPOP` with a count, `ZMSCORE`).
//!
//! A task is one string, its *element*, which moves whole between the keys
//! below and exists in exactly one of them at a time:
//! `<id>:<attempts>:<enqueued_at>:<key length or ->:<key><payload>`, where
//! `attempts` counts the deliveries so far (the next lease is delivery
//! `attempts + 1`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `taskhost:{q}:seq` | string | last task id (read and set once per push batch) |
//! | `taskhost:{q}:ready` | list | elements visible now, oldest first |
//! | `taskhost:{q}:bseq` | string | last lease batch number |
//! | `taskhost:{q}:l:<batch>` | list | the elements one lease call handed out and not yet settled |
//! | `taskhost:{q}:leased` | sorted set | batch numbers, scored by lease expiry (ms) |
//! | `taskhost:{q}:held` | string | how many elements the `l:` lists hold (for capacity and stats) |
//! | `taskhost:{q}:delayed` | sorted set | elements of delayed pushes and retries, scored by visible-at (ms) |
//! | `taskhost:{q}:unique` | hash | unique key -> id of the pending/delayed/leased task |
//! | `taskhost:{q}:dead` | list | `<failed_at>:<reason length>:<reason><element>`, newest first, trimmed |
//! | `taskhost:queues` | set | names of queues ever pushed to (for `host status`) |
//! | `taskhost:{q}:wake` | pub/sub channel | an empty message whenever a push or release made tasks ready |
//!
//! This layout replaced two earlier ones (a hash per field, then one hash
//! of packed tasks with a lease entry per task) before any release; queues
//! written by those are not migrated (drain them with the old binary
//! first). An element this layout cannot read is reported in the log and
//! left in Redis; it never stops the tasks beside it.
//!
//! # Why this layout
//!
//! A leased task stays in Redis (in its batch's `l:` list) until its holder
//! settles it, so a host that dies loses nothing: its leases expire and the
//! next lease call of any host moves them back to `ready`. That move reads
//! only the expired head of the `leased` sorted set, bounded per call, so
//! reclaiming never scans all keys (Harbor's SCAN over `execution:id:*` is
//! what this replaces). Lists with a lease sorted set were chosen over
//! Streams: Streams keep acked entries until trimmed, have no per-entry
//! delay, and XAUTOCLAIM walks the pending list rather than jumping to what
//! expired.
//!
//! Each state change is one Lua script, so it is atomic: push (capacity check,
//! unique-key check, ids, elements to `ready` or `delayed`), lease (promote
//! due retries, reclaim expired batches, pop, record the batch), renew, and
//! settle (a whole batch of acks/retries/dead letters/releases in one call).
//!
//! Redis's CPU per task is what limits throughput (one Redis core serves
//! every host), and what it costs is touching large per-task structures
//! (a hash or sorted set entry per task is a cache miss or two each time)
//! and moving values between Lua and Redis. So the lease is kept per
//! *batch*, not per task:
//! - a lease call pops up to `max` elements and stores them as they are in
//!   one new list, with one `leased` entry for the batch: no per-task hash
//!   read, no per-task lease entry;
//! - acking a whole batch (what the worker pool does) deletes that list
//!   without reading it; only the unique keys are freed one by one, and
//!   only for tasks that have one. Settling part of a batch (or retrying,
//!   dead-lettering, releasing) reads the list and keeps the rest held;
//! - renewing is one `ZADD` per batch;
//! - a lease proves itself by its batch: a batch whose lease expired was
//!   reclaimed and its number is never used again, so a host whose lease
//!   was taken over is refused. Hence only the handle that leased a task
//!   can settle or renew it (it remembers each lease's batch and unique
//!   key); another handle's settlement counts as lost.
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
//! Redis is unreachable. `renew` and `settle` are idempotent (a settlement
//! applies only to an element still in its batch), so they are retried on
//! connection errors with the shared [`Backoff`] for up to
//! [`RedisOptions::retry_for`]; lease errors are backed off by the worker
//! pool; a push error is returned to the caller, so nothing acknowledged as
//! pushed is lost.

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
/// of an element; `bump` counts one more delivery in it.
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
  return p and string.sub(e, 1, p - 1) or e
end
-- An element this layout did not write is moved as it is, never an error
-- that would stop every lease of the queue.
local function bump(e)
  local a = string.find(e, ':', 1, true)
  local b = a and string.find(e, ':', a + 1, true)
  local n = b and tonumber(string.sub(e, a + 1, b - 1))
  if not n then return e end
  return string.sub(e, 1, a) .. (n + 1) .. string.sub(e, b)
end
"#;

/// Push: ARGV = capacity (0 = none), now, shape, then per task the fields
/// its shape needs (each argument costs Redis a parse and Lua a string, so
/// the common batches send fewer):
/// - `p` (no key, no delay): the element without its `id:0:` head;
/// - `k` (all keyed, no delay): key, element without head;
/// - `g` (anything else): has_key (`1`/`0`), key, element without head, delay_ms.
///
/// Returns {0} when the batch does not fit, else {1, first_id, i1, id1, i2,
/// id2, ...}: created tasks get consecutive ids from first_id in batch
/// order, and task i (0-based) of each pair is a duplicate of the existing
/// task id.
const PUSH: &str = r#"
local pre = KEYS[1]
local cap, now, shape = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stride = (shape == 'p' and 1) or (shape == 'k' and 2) or 4
local known = {}
if shape ~= 'p' then
  local keys = {}
  if shape == 'k' then
    for b = 4, #ARGV, 2 do keys[#keys + 1] = ARGV[b] end
  else
    for b = 4, #ARGV, 4 do
      if ARGV[b] == '1' then keys[#keys + 1] = ARGV[b + 1] end
    end
  end
  if #keys > 0 then
    local ids = mget('HMGET', pre .. 'unique', keys)
    for j, k in ipairs(keys) do
      if ids[j] then known[k] = ids[j] end
    end
  end
end
local id = tonumber(redis.call('GET', pre .. 'seq') or 0)
local first = id + 1
local out, uniq, ready, delayed = {1, first}, {}, {}, {}
if shape == 'p' then
  for b = 4, #ARGV do
    id = id + 1
    ready[#ready + 1] = id .. ':0:' .. ARGV[b]
  end
else
  for b = 4, #ARGV, stride do
    local keyed, k, rest, delay
    if shape == 'k' then
      keyed, k, rest, delay = true, ARGV[b], ARGV[b + 1], 0
    else
      keyed, k, rest, delay = ARGV[b] == '1', ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
    end
    local dup = keyed and known[k]
    if dup then
      out[#out + 1] = (b - 4) / stride
      out[#out + 1] = dup
    else
      id = id + 1
      if keyed then
        known[k] = id
        uniq[#uniq + 1] = k
        uniq[#uniq + 1] = id
      end
      local e = id .. ':0:' .. rest
      if delay > 0 then
        delayed[#delayed + 1] = now + delay
        delayed[#delayed + 1] = e
      else
        ready[#ready + 1] = e
      end
    end
  end
end
local fresh = id - first + 1
if fresh == 0 then return out end
if cap > 0 then
  local count = redis.call('LLEN', pre .. 'ready') + redis.call('ZCARD', pre .. 'delayed')
    + tonumber(redis.call('GET', pre .. 'held') or 0)
  if count + fresh > cap then return {0} end
end
redis.call('SET', pre .. 'seq', id)
chunked('HSET', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('RPUSH', pre .. 'ready', ready)
-- Idle hosts wait on this channel instead of polling.
if #ready > 0 then redis.call('PUBLISH', pre .. 'wake', '') end
return out
"#;

/// Lease: ARGV = now, until, max, promote_limit. Promotes due retries and
/// reclaims expired batches first. Returns {} or {batch, {element, ...}}.
const LEASE: &str = r#"
local pre = KEYS[1]
local now, untl, max, lim = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', pre .. 'delayed', '-inf', now, 'LIMIT', 0, lim)
if #due > 0 then
  if #due < lim then
    -- Everything due was read, so this removes exactly those.
    redis.call('ZREMRANGEBYSCORE', pre .. 'delayed', '-inf', now)
  else
    chunked('ZREM', pre .. 'delayed', due)
  end
  chunked('RPUSH', pre .. 'ready', due)
end
local expired = redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now, 'LIMIT', 0, lim)
if #expired > 0 then
  local back = {}
  for _, batch in ipairs(expired) do
    local l = pre .. 'l:' .. batch
    -- The expired delivery counts as an attempt.
    for _, e in ipairs(redis.call('LRANGE', l, 0, -1)) do back[#back + 1] = bump(e) end
    redis.call('DEL', l)
  end
  chunked('ZREM', pre .. 'leased', expired)
  if #back > 0 then
    redis.call('DECRBY', pre .. 'held', #back)
    chunked('RPUSH', pre .. 'ready', back)
  end
end
local got = redis.call('LPOP', pre .. 'ready', max)
if not got then return {} end
local batch = redis.call('INCR', pre .. 'bseq')
chunked('RPUSH', pre .. 'l:' .. batch, got)
redis.call('ZADD', pre .. 'leased', untl, batch)
redis.call('INCRBY', pre .. 'held', #got)
return {batch, got}
"#;

/// Renew: ARGV = until, then batch numbers. Extends those still held and
/// returns a 1 (held) or 0 per batch.
const RENEW: &str = r#"
local pre = KEYS[1]
local batches = {}
for i = 2, #ARGV do batches[#batches + 1] = ARGV[i] end
local held = mget('ZMSCORE', pre .. 'leased', batches)
local z, out = {}, {}
for i, b in ipairs(batches) do
  out[i] = held[i] and 1 or 0
  if held[i] then
    z[#z + 1] = ARGV[1]
    z[#z + 1] = b
  end
end
chunked('ZADD', pre .. 'leased', z)
return out
"#;

/// Settle: ARGV = now, dead_capacity, then per leased batch: batch, n, and
/// n settlements of three fields: id, op, unique key. Op is `a` ack, `k`
/// ack freeing the key, `d<reason>` dead-letter, `D<reason>` dead-letter
/// freeing the key, `r<at ms>` retry, `l` release. Returns {applied, lost}.
///
/// When a batch is acked whole (the common case) its record is deleted
/// without being read; otherwise its elements are matched by id, and those
/// not settled stay in the record.
const SETTLE: &str = r#"
local pre = KEYS[1]
local now, deadcap = ARGV[1], tonumber(ARGV[2])
local applied, lost = 0, 0
local gone, uniq, delayed, back, dead = {}, {}, {}, {}, {}
local b = 3
while b <= #ARGV do
  local batch, n = ARGV[b], tonumber(ARGV[b + 1])
  local first = b + 2
  b = first + 3 * n
  local l = pre .. 'l:' .. batch
  if not redis.call('ZSCORE', pre .. 'leased', batch) then
    lost = lost + n
  else
    local whole = redis.call('LLEN', l) == n
    if whole then
      for j = first, b - 1, 3 do
        local c = string.byte(ARGV[j + 1], 1)
        if c ~= 97 and c ~= 107 then whole = false break end -- a, k
      end
    end
    if whole then
      for j = first, b - 1, 3 do
        if string.byte(ARGV[j + 1], 1) == 107 then uniq[#uniq + 1] = ARGV[j + 2] end
      end
      applied = applied + n
      redis.call('DEL', l)
      gone[#gone + 1] = batch
    else
      local els = redis.call('LRANGE', l, 0, -1)
      local at, taken = {}, {}
      for i, e in ipairs(els) do at[idof(e)] = i end
      for j = first, b - 1, 3 do
        local i = at[ARGV[j]]
        if i and not taken[i] then
          taken[i] = true
          applied = applied + 1
          local e, op = els[i], ARGV[j + 1]
          local c = string.byte(op, 1)
          if c == 107 or c == 68 then uniq[#uniq + 1] = ARGV[j + 2] end -- k, D
          if c == 114 then -- r: this delivery counts
            delayed[#delayed + 1] = string.sub(op, 2)
            delayed[#delayed + 1] = bump(e)
          elseif c == 108 then -- l: it does not
            back[#back + 1] = e
          elseif c == 100 or c == 68 then -- d, D
            local reason = string.sub(op, 2)
            dead[#dead + 1] = now .. ':' .. #reason .. ':' .. reason .. e
          end
        else
          lost = lost + 1
        end
      end
      local rest = {}
      for i, e in ipairs(els) do
        if not taken[i] then rest[#rest + 1] = e end
      end
      redis.call('DEL', l)
      if #rest > 0 then chunked('RPUSH', l, rest) else gone[#gone + 1] = batch end
    end
  end
end
if applied > 0 then redis.call('DECRBY', pre .. 'held', applied) end
chunked('ZREM', pre .. 'leased', gone)
chunked('HDEL', pre .. 'unique', uniq)
chunked('ZADD', pre .. 'delayed', delayed)
chunked('LPUSH', pre .. 'ready', back)
if #back > 0 then redis.call('PUBLISH', pre .. 'wake', '') end
if #dead > 0 then
  chunked('LPUSH', pre .. 'dead', dead)
  redis.call('LTRIM', pre .. 'dead', 0, deadcap - 1)
end
return {applied, lost}
"#;

/// Stats: ARGV = now. Returns {pending, delayed, leased, dead}.
const STATS: &str = r#"
local pre = KEYS[1]
local now = ARGV[1]
local due = redis.call('ZCOUNT', pre .. 'delayed', '-inf', now)
local expired = 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now)) do
  expired = expired + redis.call('LLEN', pre .. 'l:' .. b)
end
return {
  redis.call('LLEN', pre .. 'ready') + due + expired,
  redis.call('ZCARD', pre .. 'delayed') - due,
  tonumber(redis.call('GET', pre .. 'held') or 0) - expired,
  redis.call('LLEN', pre .. 'dead'),
}
"#;

/// The scripts, hashed once per store.
#[derive(Debug)]
struct Scripts {
    push: Script,
    lease: Script,
    renew: Script,
    settle: Script,
    stats: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            push: Script::new(&format!("{HELPERS}{PUSH}")),
            lease: Script::new(&format!("{HELPERS}{LEASE}")),
            renew: Script::new(&format!("{HELPERS}{RENEW}")),
            settle: Script::new(&format!("{HELPERS}{SETTLE}")),
            stats: Script::new(STATS),
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
            held: Mutex::new(HashMap::new()),
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
    /// The leases this handle holds: only their holder can settle or renew
    /// them, as only it knows their batch.
    held: Mutex<HashMap<Lease, Held>>,
    /// Woken by the store's listener when a push or release on any host
    /// made tasks ready here.
    wake: Arc<Notify>,
}

/// What a handle keeps of a lease it holds until it settles it.
#[derive(Debug)]
struct Held {
    /// The lease call that handed the task out: its record in Redis.
    batch: u64,
    /// The task's unique key, freed by an ack or a dead letter.
    key: Option<String>,
}

/// A new task's element without its `id:0:` head, which the push script
/// adds: `<enqueued_at>:<key length or ->:<key><payload>`, written into `out`.
fn pack(out: &mut Vec<u8>, enqueued_at: u64, key: Option<&str>, payload: &[u8]) {
    use std::io::Write;
    out.clear();
    let _ = match key {
        Some(k) => write!(out, "{enqueued_at}:{}:{k}", k.len()),
        None => write!(out, "{enqueued_at}:-:"),
    };
    out.extend_from_slice(payload);
}

/// A task element as stored in Redis.
#[derive(Debug, PartialEq, Eq)]
struct Element {
    id: u64,
    /// Deliveries counted so far; the next lease is delivery `attempts + 1`.
    attempts: u32,
    enqueued_at: u64,
    key: Option<String>,
    payload: Vec<u8>,
}

/// Splits `<number>:` off the front of `v[at..]`; returns it and the
/// position after the colon.
fn field(v: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = v.get(at..)?;
    let n = rest.iter().position(|&b| b == b':')?;
    Some((std::str::from_utf8(&rest[..n]).ok()?, at + n + 1))
}

/// Parses `<id>:<attempts>:<enqueued_at>:<key length or ->:<key><payload>`,
/// reusing the buffer for the payload; gives the buffer back if it does
/// not parse.
fn unpack(mut v: Vec<u8>) -> Result<Element, Vec<u8>> {
    let Some((mut e, start)) = header(&v) else {
        return Err(v);
    };
    v.drain(..start);
    e.payload = v;
    Ok(e)
}

/// An element's fields but the payload, and where the payload starts.
fn header(v: &[u8]) -> Option<(Element, usize)> {
    let (id, at) = field(v, 0)?;
    let id = id.parse().ok()?;
    let (attempts, at) = field(v, at)?;
    let attempts = attempts.parse().ok()?;
    let (enqueued, at) = field(v, at)?;
    let enqueued_at = enqueued.parse().ok()?;
    let (key, at) = field(v, at)?;
    let (key, start) = match key {
        "-" => (None, at),
        n => {
            let end = at.checked_add(n.parse().ok()?)?;
            let k = v.get(at..end)?;
            (Some(String::from_utf8(k.to_vec()).ok()?), end)
        }
    };
    let e = Element {
        id,
        attempts,
        enqueued_at,
        key,
        payload: Vec::new(),
    };
    Some((e, start))
}

/// Parses a dead letter: `<failed_at>:<reason length>:<reason><element>`.
fn unpack_dead(v: Vec<u8>) -> Option<(u64, String, Element)> {
    let (failed, at) = field(&v, 0)?;
    let failed_at = failed.parse().ok()?;
    let (n, at) = field(&v, at)?;
    let end = at.checked_add(n.parse().ok()?)?;
    let reason = String::from_utf8_lossy(v.get(at..end)?).into_owned();
    Some((failed_at, reason, unpack(v[end..].to_vec()).ok()?))
}

impl RedisQueue {
    fn bad_reply(&self, what: &str, v: &Value) -> QueueError {
        QueueError::Redis {
            url: self.shared.url.clone(),
            message: format!("unexpected reply to {what} on queue {:?}: {v:?}", self.name),
        }
    }

    /// The task an element leased now (or last) stands for.
    fn task(&self, e: Element) -> Task {
        Task {
            id: e.id,
            queue: self.name.clone(),
            attempt: e.attempts.saturating_add(1),
            payload: e.payload,
            unique_key: e.key,
            enqueued_at_ms: e.enqueued_at,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Lease, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
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

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
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
        let mut packed = Vec::new();
        // The push script's argument shape (see `PUSH`).
        let undelayed = tasks.iter().all(|t| t.delay.is_none_or(|d| d.is_zero()));
        let shape = match () {
            _ if undelayed && tasks.iter().all(|t| t.unique_key.is_none()) => "p",
            _ if undelayed && tasks.iter().all(|t| t.unique_key.is_some()) => "k",
            _ => "g",
        };
        loop {
            let now = self.shared.clock.now_ms();
            let mut inv = self.shared.call(&self.shared.scripts.push, &self.prefix);
            inv.arg(opts.capacity.unwrap_or(0)).arg(now).arg(shape);
            for t in &tasks {
                let delay = t
                    .delay
                    .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64);
                match (shape, &t.unique_key) {
                    ("p", _) => &mut inv,
                    ("k", Some(k)) => inv.arg(k.as_bytes()),
                    (_, Some(k)) => inv.arg("1").arg(k.as_bytes()),
                    (_, None) => inv.arg("0").arg(""),
                };
                pack(&mut packed, now, t.unique_key.as_deref(), &t.payload);
                inv.arg(&packed[..]);
                if shape == "g" {
                    inv.arg(delay);
                }
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
        let reply = array(v).map_err(|v| self.bad_reply("lease", &v))?;
        if reply.is_empty() {
            return Ok(Vec::new());
        }
        let (batch, elements) = match <[Value; 2]>::try_from(reply) {
            Ok([b, Value::Array(els)]) => match int(&b) {
                Some(b) => (b as u64, els),
                None => return Err(self.bad_reply("lease", &b)),
            },
            Ok(v) => return Err(self.bad_reply("lease", &Value::Array(v.into()))),
            Err(v) => return Err(self.bad_reply("lease", &Value::Array(v))),
        };
        let mut tasks = Vec::with_capacity(elements.len());
        for e in elements {
            let parsed = match e {
                Value::BulkString(b) => unpack(b).map_err(Value::BulkString),
                other => Err(other),
            };
            match parsed {
                Ok(e) => tasks.push(self.task(e)),
                // Not written by this layout (see the module doc). It stays
                // in its batch's record, which no settlement of the others
                // removes, and comes back when the lease expires: reported
                // each time, never dropped, never blocking the tasks beside it.
                Err(other) => {
                    let shown = format!("{other:?}");
                    tracing::error!(
                        queue = %self.name,
                        url = %self.shared.url,
                        element = %shown.chars().take(120).collect::<String>(),
                        "a task element in Redis does not parse (written by another version?); it is left in Redis"
                    );
                }
            }
        }
        let mut held = self.held();
        for t in &tasks {
            held.insert(
                t.lease(),
                Held {
                    batch,
                    key: t.unique_key.clone(),
                },
            );
        }
        Ok(tasks)
    }

    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<usize, QueueError> {
        // Per batch, how many of the given leases it holds.
        let mut batches: Vec<(u64, usize)> = Vec::new();
        {
            let held = self.held();
            for l in leases {
                let Some(h) = held.get(l) else { continue };
                match batches.iter_mut().find(|(b, _)| *b == h.batch) {
                    Some((_, n)) => *n += 1,
                    None => batches.push((h.batch, 1)),
                }
            }
        }
        if batches.is_empty() {
            return Ok(0);
        }
        let mut inv = self.shared.call(&self.shared.scripts.renew, &self.prefix);
        inv.arg(clock::after(self.shared.clock.now_ms(), ttl));
        for (b, _) in &batches {
            inv.arg(*b);
        }
        let v = self.shared.run_retrying(&inv).await?;
        let flags = match &v {
            Value::Array(f) if f.len() == batches.len() => f,
            _ => return Err(self.bad_reply("renew", &v)),
        };
        Ok(batches
            .iter()
            .zip(flags)
            .filter(|(_, f)| int(f) == Some(1))
            .map(|((_, n), _)| n)
            .sum())
    }

    async fn settle(&self, settlements: Vec<Settle>) -> Result<Settled, QueueError> {
        // Leases this handle does not hold (settled already, or never
        // leased here) are refused without asking Redis.
        let mut unknown = 0;
        let mut batches: Vec<(u64, Vec<(Settle, Option<String>)>)> = Vec::new();
        {
            let mut held = self.held();
            for s in settlements {
                let Some(h) = held.remove(&s.lease) else {
                    unknown += 1;
                    continue;
                };
                let entry = (s, h.key);
                match batches.iter_mut().find(|(b, _)| *b == h.batch) {
                    Some((_, v)) => v.push(entry),
                    None => batches.push((h.batch, vec![entry])),
                }
            }
        }
        if batches.is_empty() {
            return Ok(Settled {
                applied: 0,
                lost: unknown,
            });
        }
        let mut inv = self.shared.call(&self.shared.scripts.settle, &self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(self.shared.opts.dead_capacity);
        let mut op = Vec::new();
        for (batch, group) in &batches {
            inv.arg(*batch).arg(group.len());
            for (s, key) in group {
                op.clear();
                // Acks and dead letters free the key; a retry or release
                // keeps it for the task that comes back.
                match &s.action {
                    Action::Ack => op.push(if key.is_some() { b'k' } else { b'a' }),
                    Action::DeadLetter(reason) => {
                        op.push(if key.is_some() { b'D' } else { b'd' });
                        op.extend_from_slice(reason.as_bytes());
                    }
                    Action::RetryAt(at) => {
                        op.push(b'r');
                        op.extend_from_slice(at.to_string().as_bytes());
                    }
                    Action::Release => op.push(b'l'),
                }
                inv.arg(s.lease.id)
                    .arg(&op[..])
                    .arg(key.as_deref().unwrap_or(""));
            }
        }
        let v = self.shared.run_retrying(&inv).await?;
        match &v {
            Value::Array(r) => match (r.first().and_then(int), r.get(1).and_then(int)) {
                (Some(applied), Some(lost)) => Ok(Settled {
                    applied: applied as usize,
                    lost: lost as usize + unknown,
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
        let n: Option<Vec<u64>> = r.iter().map(|x| int(x).map(|n| n.max(0) as u64)).collect();
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
        let mut conn = self.shared.conn.clone();
        let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(format!("{}dead", self.prefix))
            .arg(0)
            .arg(limit - 1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        entries
            .into_iter()
            .map(|e| {
                let shown = String::from_utf8_lossy(&e).into_owned();
                let (failed_at_ms, reason, task) = unpack_dead(e)
                    .ok_or_else(|| self.bad_reply("dead letters", &Value::SimpleString(shown)))?;
                Ok(DeadTask {
                    task: self.task(task),
                    reason,
                    failed_at_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::settle_all;
    use taskhost_fixtures::redis::RedisServer;

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

        // A release hands the task back and wakes a waiter too (through
        // Redis, as it would on another host).
        let waiter = wait(&waiting);
        waiting
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

    /// A lease is its holder's: another handle (another host) cannot
    /// settle it, and the task comes back when the lease expires.
    #[tokio::test]
    async fn only_the_holder_settles_a_lease() {
        let server = RedisServer::start().unwrap();
        let clock = ManualClock::new(1_000);
        let open = || RedisStore::open(&server.url(), RedisOptions::default(), clock.clone());
        let (a, b) = (open().unwrap(), open().unwrap());
        let (qa, qb) = (a.queue("q").unwrap(), b.queue("q").unwrap());
        qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
        let ttl = Duration::from_secs(10);
        let got = qa.lease(1, ttl).await.unwrap();
        assert_eq!(got[0].unique_key.as_deref(), Some("k:1"));
        let refused = qb.ack(&[got[0].lease()]).await.unwrap();
        assert_eq!((refused.applied, refused.lost), (0, 1));
        clock.advance(ttl);
        let again = qb.lease(1, ttl).await.unwrap();
        assert_eq!((again[0].id, again[0].attempt), (got[0].id, 2));
        assert_eq!(qb.ack(&[again[0].lease()]).await.unwrap().applied, 1);
        let pushed = qa.push(NewTask::new("p").unique("k:1")).await.unwrap();
        assert!(matches!(pushed, Pushed::Created(_)), "the key was freed");
    }

    /// A private server and a store on it, its clock at 1 s and driven by hand.
    fn manual_store() -> (RedisServer, Arc<ManualClock>, RedisStore) {
        let server = RedisServer::start().unwrap();
        let clock = ManualClock::new(1_000);
        let store =
            RedisStore::open(&server.url(), RedisOptions::default(), clock.clone()).unwrap();
        (server, clock, store)
    }

    /// Settling part of a leased batch keeps the rest held: renewable,
    /// settleable later, and reclaimed if its lease expires.
    #[tokio::test]
    async fn part_of_a_batch_settles_and_the_rest_stays_held() {
        let (_server, clock, store) = manual_store();
        let q = store.queue("q").unwrap();
        let tasks = (0..4).map(|i| NewTask::new(format!("t{i}")).unique(format!("k{i}")));
        q.push_batch(tasks.collect()).await.unwrap();
        let ttl = Duration::from_secs(10);
        let got = q.lease(4, ttl).await.unwrap();
        assert_eq!(q.ack(&[got[0].lease()]).await.unwrap().applied, 1);
        assert_eq!(
            q.retry(got[1].lease(), clock.now_ms() + 1)
                .await
                .unwrap()
                .applied,
            1
        );
        let s = q.stats().await.unwrap();
        assert_eq!((s.leased, s.delayed), (2, 1));
        assert_eq!(
            q.renew(&[got[0].lease(), got[2].lease()], ttl)
                .await
                .unwrap(),
            1
        );
        assert_eq!(q.ack(&[got[2].lease()]).await.unwrap().applied, 1);
        clock.advance(ttl);
        let back = q.lease(4, ttl).await.unwrap();
        let mut seen: Vec<_> = back
            .iter()
            .map(|t| (t.payload.clone(), t.attempt))
            .collect();
        seen.sort();
        assert_eq!(seen, vec![(b"t1".to_vec(), 2), (b"t3".to_vec(), 2)]);
        assert_eq!(
            q.ack(&back.iter().map(Task::lease).collect::<Vec<_>>())
                .await
                .unwrap()
                .applied,
            2
        );
        assert!(q.is_empty().await.unwrap());
        for k in ["k0", "k1", "k2", "k3"] {
            let p = q.push(NewTask::new("again").unique(k)).await.unwrap();
            assert!(matches!(p, Pushed::Created(_)), "{k} was freed");
        }
    }

    /// An element this layout did not write (an older version's queue) is
    /// reported, kept in Redis, and does not hold up the tasks beside it.
    #[tokio::test]
    async fn a_foreign_element_is_kept_and_does_not_block_the_queue() {
        let (server, clock, store) = manual_store();
        let q = store.queue("q").unwrap();
        q.push(NewTask::new("a")).await.unwrap();
        server
            .command(&["RPUSH", "taskhost:{q}:ready", "17"])
            .unwrap();
        q.push(NewTask::new("b")).await.unwrap();
        let ttl = Duration::from_secs(10);
        let got = q.lease(10, ttl).await.unwrap();
        let payloads: Vec<_> = got.iter().map(|t| t.payload.as_slice()).collect();
        assert_eq!(payloads, [b"a", b"b"]);
        let leases: Vec<_> = got.iter().map(Task::lease).collect();
        assert_eq!(q.ack(&leases).await.unwrap().applied, 2);
        assert_eq!(
            q.stats().await.unwrap().leased,
            1,
            "the foreign element stays"
        );
        clock.advance(ttl);
        q.push(NewTask::new("c")).await.unwrap();
        let got = q.lease(10, ttl).await.unwrap();
        assert_eq!(
            got.len(),
            1,
            "the expired lease's element came back, still unread"
        );
        assert_eq!(got[0].payload, b"c");
        assert_eq!(q.stats().await.unwrap().leased, 2);
    }

    #[test]
    fn elements_round_trip() {
        let mut packed = Vec::new();
        for key in [None, Some(""), Some("a:b:c"), Some("ключ")] {
            pack(&mut packed, 1_234, key, b"x:y\n");
            let mut e = format!("{}:{}:", u64::MAX, u32::MAX).into_bytes();
            e.extend_from_slice(&packed);
            let got = unpack(e.clone()).unwrap();
            let want = Element {
                id: u64::MAX,
                attempts: u32::MAX,
                enqueued_at: 1_234,
                key: key.map(str::to_owned),
                payload: b"x:y\n".to_vec(),
            };
            assert_eq!(got, want);
            let mut dead = b"77:6:why:no".to_vec();
            dead.extend_from_slice(&e);
            assert_eq!(unpack_dead(dead), Some((77, "why:no".to_owned(), want)));
        }
        assert_eq!(
            unpack(b"1:0:12:5:ab".to_vec()).ok(),
            None,
            "key longer than the value"
        );
        assert_eq!(
            unpack(b"1:x:12:-:ab".to_vec()).ok(),
            None,
            "attempts not a number"
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

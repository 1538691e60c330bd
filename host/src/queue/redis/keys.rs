//! Every Redis key and channel name the backend uses, in one place.
//!
//! A queue's keys share the prefix `taskhost:{<queue>}:` (one shard) or
//! `taskhost:{<queue>#<i>}:` (shard `i` of several); the `{ }` hash tag
//! puts each shard's keys in one Redis Cluster slot, so each script may
//! touch any of them. The scripts get the prefix as their one `KEYS` entry
//! and append the suffixes listed in the module doc of [`super`].

/// The set naming every queue ever pushed to (for `host status`).
pub(super) const QUEUES: &str = "taskhost:queues";

/// Pattern of the channels the push and settle scripts publish to when
/// tasks become ready.
pub(super) const WAKE_PATTERN: &str = "taskhost:{*}:wake";

/// The set of registered host ids (see `hosts.rs`).
pub(super) const HOSTS: &str = "taskhost:hosts";

/// The channel `host reload` publishes to; every host listens.
pub(super) const RELOAD: &str = "taskhost:reload";

/// The heartbeat key of host `id`: its registration as JSON, expiring
/// unless renewed.
pub(super) fn host(id: &str) -> String {
    format!("taskhost:host:{id}")
}

/// Suffix of the dead-letter sorted set (scored by task id) under a queue's prefix.
pub(super) const DEAD: &str = "deadz";

/// Suffix of the key that, while it exists, marks the queue paused.
pub(super) const PAUSED: &str = "paused";

/// The hash of every queue's shard count (see `shards.rs`).
pub(super) const SHARDS: &str = "taskhost:shards";

/// The key prefix of shard `i` of queue `name` with `n` shards: the
/// queue's own `taskhost:{name}:` when it has one, `taskhost:{name#i}:`
/// (a hash tag, so a slot, per shard) when it has more.
pub(super) fn shard_prefix(name: &str, i: usize, n: usize) -> String {
    if n == 1 {
        format!("taskhost:{{{name}}}:")
    } else {
        format!("taskhost:{{{name}#{i}}}:")
    }
}

/// The queue a wake channel (one matched by [`WAKE_PATTERN`]) belongs to,
/// whichever of its shards published.
pub(super) fn queue_of_wake_channel(channel: &str) -> Option<&str> {
    let tag = channel
        .strip_prefix("taskhost:{")
        .and_then(|c| c.strip_suffix("}:wake"))?;
    Some(tag.rsplit_once('#').map_or(tag, |(name, _)| name))
}

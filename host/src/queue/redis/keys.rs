//! Every Redis key and channel name the backend uses, in one place.
//!
//! A queue's keys share the prefix `taskhost:{<queue>}:` (one shard) or
//! `taskhost:{<queue>#<i>[.<k>]}:` (shard `i` of several, see
//! [`shard_prefix`]); the `{ }` hash tag puts each shard's keys in one
//! Redis Cluster slot. Each script declares in `KEYS` every one of them it
//! touches, built from the suffixes below (see `script.rs`); the key table
//! is in the module doc of [`super`].

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

/// Suffix of the last task id.
pub(super) const SEQ: &str = "seq";

/// Suffix of the list of elements visible now.
pub(super) const READY: &str = "ready";

/// Suffix of the sorted set of delayed elements, scored by visible-at.
pub(super) const DELAYED: &str = "delayed";

/// Suffix of the hash unique key -> task id.
pub(super) const UNIQUE: &str = "unique";

/// Suffix of the count of leased elements.
pub(super) const HELD: &str = "held";

/// Suffix of the last lease batch number.
pub(super) const BSEQ: &str = "bseq";

/// Suffix of the sorted set of leased batches, scored by expiry.
pub(super) const LEASED: &str = "leased";

/// Suffix of the hash batch -> its elements (a MessagePack array).
pub(super) const BATCHES: &str = "batches";

/// Suffix of the hash batch -> how many elements it holds.
pub(super) const SIZES: &str = "sizes";

/// Suffix of the sorted set `<host>\0<batch>` of batches registered hosts hold.
pub(super) const HOLDERS: &str = "holders";

/// Suffix of the dead-letter sorted set (scored by task id).
pub(super) const DEAD: &str = "deadz";

/// Suffix of the key that, while it exists, marks the queue paused.
pub(super) const PAUSED: &str = "paused";

/// Suffix of the pub/sub channel pushes and releases wake idle hosts on.
pub(super) const WAKE: &str = "wake";

/// Suffix of a batch's list in layout 1 (before [`BATCHES`]); read once,
/// when a queue of that layout is first used (see `migrate.rs`).
pub(super) const OLD_BATCH: &str = "l:";

/// Suffix of a host's set of batches in layout 1 (before [`HOLDERS`]).
pub(super) const OLD_HOLDS: &str = "h:";

/// The hash queue name -> the layout its keys have (see `migrate.rs`).
pub(super) const LAYOUTS: &str = "taskhost:layouts";

/// The hash of every queue's shard count (see `shards.rs`).
pub(super) const SHARDS: &str = "taskhost:shards";

/// The key prefix of shard `i` of queue `name` with `n` shards: the
/// queue's own `taskhost:{name}:` when it has one. With more, the hash tag
/// is the first of `name#i`, `name#i.1`, `name#i.2`, ... whose cluster slot
/// lies in the `i`-th `n`-th of the slot space, so shards sit on distinct
/// masters when `n` masters split the slots evenly (as
/// `redis-cli --cluster create` does), and every host derives the same tags.
pub fn shard_prefix(name: &str, i: usize, n: usize) -> String {
    if n == 1 {
        return format!("taskhost:{{{name}}}:");
    }
    let mut tag = format!("{name}#{i}");
    for k in 1.. {
        if usize::from(slot(tag.as_bytes())) * n / SLOTS == i {
            break;
        }
        tag = format!("{name}#{i}.{k}");
    }
    format!("taskhost:{{{tag}}}:")
}

/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The cluster slot of hash tag `tag`: CRC-16/XMODEM modulo the slot count.
fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// The queue a wake channel (one matched by [`WAKE_PATTERN`]) belongs to,
/// whichever of its shards published.
pub(super) fn queue_of_wake_channel(channel: &str) -> Option<&str> {
    let tag = channel
        .strip_prefix("taskhost:{")
        .and_then(|c| c.strip_suffix("}:wake"))?;
    Some(tag.rsplit_once('#').map_or(tag, |(name, _)| name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_are_the_clusters_and_shards_spread_over_the_slot_space() {
        for tag in ["", "a", "jobs#0", "123456789", "taskhost"] {
            assert_eq!(
                Slot::new(slot(tag.as_bytes())),
                Some(Slot::for_key(tag)),
                "{tag}"
            );
        }
        for n in [2, 3, 5, 16] {
            for i in 0..n {
                let p = shard_prefix("jobs", i, n);
                let tag = p.trim_start_matches("taskhost:{").trim_end_matches("}:");
                assert_eq!(usize::from(slot(tag.as_bytes())) * n / SLOTS, i, "{p}");
                assert_eq!(queue_of_wake_channel(&format!("{}wake", p)), Some("jobs"));
            }
        }
        assert_eq!(shard_prefix("jobs", 0, 1), "taskhost:{jobs}:");
    }
}

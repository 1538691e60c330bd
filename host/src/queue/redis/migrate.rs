//! Bringing a queue's keys to this version's layout, once per queue.
//!
//! `taskhost:layouts` records per queue the layout its keys have. Layout 1
//! kept each leased batch in a list `l:<batch>` and each host's batches in
//! a set `h:<host>`: keys the scripts built from names, which Redis Cluster
//! cannot see in a script's `KEYS`. Layout 2 keeps them in the hashes
//! `batches`, `sizes` and `holders`, so every script declares every key it touches.
//! The first host of this version to use a layout-1 queue moves its leased
//! batches over (each move is idempotent, so hosts starting together are
//! safe), then records layout 2. Hosts of an older version must be stopped
//! first: they would go on writing layout 1.

use redis::Script;

use super::{Shared, keys};
use crate::queue::QueueError;

/// The layout this version reads and writes.
pub(super) const LAYOUT: u32 = 2;

/// Batches moved per script call.
const CHUNK: usize = 100;

impl Shared {
    /// Brings queue `name` (`n` shards) to [`LAYOUT`], refusing a newer one.
    pub(super) async fn migrate(&self, name: &str, n: usize) -> Result<(), QueueError> {
        let recorded = self.hget(keys::LAYOUTS, name).await?;
        match recorded.as_deref().map(str::parse::<u32>) {
            Some(Ok(LAYOUT)) => return Ok(()),
            Some(Ok(v)) if v > LAYOUT => {
                return Err(QueueError::Config(format!(
                    "queue {name:?} in Redis has key layout {v}, newer than this taskhost's {LAYOUT}: \
                     run the version that wrote it"
                )));
            }
            Some(Err(_)) => {
                return Err(QueueError::Redis {
                    url: self.url.clone(),
                    message: format!(
                        "{} holds {recorded:?} as the layout of queue {name:?}: not a number",
                        keys::LAYOUTS
                    ),
                });
            }
            None | Some(Ok(_)) => {}
        }
        for i in 0..n {
            self.migrate_shard(&keys::shard_prefix(name, i, n)).await?;
        }
        redis::cmd("HSET")
            .arg(keys::LAYOUTS)
            .arg(name)
            .arg(LAYOUT)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.error(e))
    }

    /// Moves the leased batches under `prefix` from layout 1 to 2.
    async fn migrate_shard(&self, prefix: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let batches: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}{}", keys::LEASED))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if batches.is_empty() {
            return Ok(());
        }
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(include_str!("scripts/migrate.lua")));
        let mut moved = 0;
        for part in batches.chunks(CHUNK) {
            let mut call = SCRIPT.prepare_invoke();
            call.key(format!("{prefix}{}", keys::BATCHES))
                .key(format!("{prefix}{}", keys::SIZES))
                .key(format!("{prefix}{}", keys::HOLDERS));
            for b in part {
                let list = format!("{prefix}{}{b}", keys::OLD_BATCH);
                let set = match b.split_once('@') {
                    Some((_, host)) => format!("{prefix}{}{host}", keys::OLD_HOLDS),
                    None => list.clone(),
                };
                call.key(list).key(set).arg(b);
            }
            moved += call
                .invoke_async::<u64>(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
        }
        tracing::info!(url = %self.url, prefix, moved, "moved leased batches to key layout {LAYOUT}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::clock::ManualClock;
    use crate::queue::redis::{RedisOptions, RedisStore};
    use crate::queue::{QueueStore, Task};
    use taskhost_fixtures::redis::RedisServer;

    /// A queue as layout 1 left it: batch `1.aa` (expired, no holder) with
    /// two tasks, and batch `2.bb@host-a` (held) with one, listed in
    /// host-a's set.
    fn layout_1(server: &RedisServer) {
        let cmd = |args: &[&str]| {
            server.command(args).unwrap();
        };
        cmd(&["SET", "taskhost:{jobs}:seq", "3"]);
        cmd(&["SADD", "taskhost:queues", "jobs"]);
        cmd(&[
            "RPUSH",
            "taskhost:{jobs}:l:1.aa",
            "1:0:5:-:one",
            "2:0:5:-:two",
        ]);
        cmd(&["RPUSH", "taskhost:{jobs}:l:2.bb@host-a", "3:0:5:-:three"]);
        cmd(&[
            "ZADD",
            "taskhost:{jobs}:leased",
            "500",
            "1.aa",
            "99999999",
            "2.bb@host-a",
        ]);
        cmd(&["SADD", "taskhost:{jobs}:h:host-a", "2.bb@host-a"]);
        cmd(&["SET", "taskhost:{jobs}:held", "3"]);
        cmd(&["SET", "taskhost:{jobs}:bseq", "2"]);
    }

    /// The first use moves every leased batch to the new keys, keeping its
    /// tasks and holder; the expired one comes back to a lease, and the
    /// gone holder's batch comes back when its host is reclaimed.
    #[tokio::test]
    async fn a_layout_1_queue_is_moved_over_at_first_use() {
        let server = RedisServer::start().unwrap();
        layout_1(&server);
        let clock = ManualClock::new(1_000);
        let store =
            RedisStore::open(&server.url(), RedisOptions::default(), clock.clone()).unwrap();
        let q = store.queue("jobs").unwrap();
        let ttl = Duration::from_secs(10);
        let got = q.lease(10, ttl).await.unwrap();
        let payloads: Vec<_> = got.iter().map(|t| t.payload.as_slice()).collect();
        assert_eq!(payloads, [b"one", b"two"], "the expired batch came back");
        assert!(got.iter().all(|t| t.attempt == 2), "its delivery counted");
        for gone in [
            "taskhost:{jobs}:l:1.aa",
            "taskhost:{jobs}:l:2.bb@host-a",
            "taskhost:{jobs}:h:host-a",
        ] {
            let n = server.command(&["EXISTS", gone]).unwrap();
            assert!(n.contains('0'), "{gone}: {n}");
        }
        let holders = server
            .command(&["ZRANGE", "taskhost:{jobs}:holders", "0", "-1"])
            .unwrap();
        assert!(holders.contains("host-a\u{0}2.bb@host-a"), "{holders:?}");
        let layout = server
            .command(&["HGET", "taskhost:layouts", "jobs"])
            .unwrap();
        assert!(layout.contains('2'), "{layout}");
        let leases: Vec<_> = got.iter().map(Task::lease).collect();
        assert_eq!(q.ack(&leases).await.unwrap().applied, 2);

        // host-a is gone: its batch comes back at once.
        server
            .command(&["SADD", "taskhost:hosts", "host-a"])
            .unwrap();
        assert_eq!(store.registry().reclaim_gone().await.unwrap(), 1);
        let got = q.lease(10, ttl).await.unwrap();
        let payloads: Vec<_> = got.iter().map(|t| t.payload.as_slice()).collect();
        assert_eq!(payloads, [b"three"]);
        let s = q.stats().await.unwrap();
        assert_eq!((s.pending, s.leased), (0, 1));
        store.close().await;
    }

    /// A queue written by a newer layout is refused, naming both.
    #[tokio::test]
    async fn a_newer_layout_is_refused() {
        let server = RedisServer::start().unwrap();
        server
            .command(&["HSET", "taskhost:layouts", "jobs", "3"])
            .unwrap();
        let store = RedisStore::open(
            &server.url(),
            RedisOptions::default(),
            crate::clock::system(),
        )
        .unwrap();
        let q = store.queue("jobs").unwrap();
        let err = q
            .lease(1, Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("layout 3") && err.contains("jobs"), "{err}");
        store.close().await;
    }
}

//! Real `host run` processes on a private Redis Cluster (3 masters, started
//! by the test with `redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create`), sharing one queue split into 3 shards.

use std::time::Duration;

use crate::multihost::{self, LONG, Store, TASKS};
use crate::support::*;
use taskhost::queue::redis::shard_prefix;
use taskhost_fixtures::redis_cluster::RedisCluster;

/// The hosts' `[redis]` table: queue `default` in 3 shards.
const SHARDED: (&str, &str) = ("redis", "{ shards = { default = 3 } }");

/// Three hosts on the cluster at `url`, sharing the 3-shard queue.
fn sharded(url: &str) -> Store<'_> {
    Store {
        hosts: 3,
        table: Some(SHARDED),
        ..Store::new("redis", url)
    }
}

#[test]
fn three_hosts_drain_a_three_shard_queue_on_a_cluster_exactly_once() {
    let cluster = RedisCluster::start(3, 0).unwrap();
    multihost::hosts_drain_each_task_exactly_once(sharded(&cluster.url()));
    // Each shard's slot lies in another third of the slot space, so on
    // another master.
    let masters: std::collections::HashSet<usize> = (0..3)
        .map(|i| {
            cluster
                .master_of(&format!("taskhost:{{default#{i}}}:ready"))
                .unwrap()
        })
        .collect();
    assert_eq!(masters.len(), 3, "each shard on its own master");
}

#[test]
fn a_unique_key_is_never_handled_by_two_hosts_at_once_across_shards() {
    let cluster = RedisCluster::start(3, 0).unwrap();
    multihost::a_unique_key_is_never_handled_twice_at_once(sharded(&cluster.url()));
}

/// A master is killed mid-run; its replica takes over. Everything pushed
/// was replicated before the kill, so nothing is lost; lease and
/// settlement writes the replica had not received come back as repeated
/// deliveries (at-least-once), and the lease nonce keeps a host from
/// settling a batch whose number the new master hands out again.
#[test]
fn hosts_carry_on_when_a_master_dies_and_its_replica_takes_over() {
    let _g = multihost::heavy();
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let url = cluster.url();
    let store = sharded(&url);
    let tmp = tempfile::tempdir().unwrap();
    // Pushed (into the 3 shards the config names) and replicated while
    // the queue is paused; resumed once every host serves, so the drain,
    // which takes seconds, is surely under way at the kill.
    let config = HostToml::new(&tmp.path().join("push-data"))
        .backend("redis")
        .string("queue_url", &url)
        .raw(SHARDED.0, SHARDED.1)
        .write(tmp.path().join("push.toml"));
    let cli = |cmd: &str| ok(host().arg(cmd).arg("--config").arg(&config).arg("default"));
    cli("pause");
    let pushed = ok(host()
        .arg("push")
        .arg("--config")
        .arg(&config)
        .args(["default", "--file"])
        .arg(payload_file(tmp.path(), TASKS)));
    assert!(
        pushed.contains(&format!("pushed {TASKS} tasks")),
        "{pushed}"
    );
    cluster.wait_replicated(Duration::from_secs(60)).unwrap();
    let hosts = multihost::archive_hosts(tmp.path(), store);
    cli("resume");
    multihost::first_host_with(tmp.path(), store.hosts, 10);
    let shard0 = format!("{}ready", shard_prefix("default", 0, 3));
    let victim = cluster.master_of(&shard0).unwrap();
    cluster.kill(victim);
    let at_kill: usize = (0..store.hosts)
        .map(|n| archived(&multihost::out_dir(tmp.path(), n)).len())
        .sum();
    assert!(at_kill < TASKS, "killed mid-run ({at_kill} archived)");
    cluster.wait_healthy(Duration::from_secs(60)).unwrap();
    wait_until("the queue drained", LONG, || multihost::drained(&url));
    for h in hosts {
        h.stop();
    }
    let (dups, per_host) = multihost::check_archived(tmp.path(), store.hosts);
    eprintln!("failover: every task done; {dups} repeated; {per_host:?} per host");
    // Repeats come from leases and settlements in flight at the kill:
    // at most what the hosts held then and in the settles they retried.
    assert!(
        dups <= 2 * store.hosts * 2 * 100,
        "{dups} repeated deliveries"
    );
}

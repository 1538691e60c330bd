//! The Redis host registry against a private `redis-server`.

use super::*;
use crate::clock;
use crate::queue::redis::{RedisOptions, RedisStore};
use crate::queue::{QueueStore, hosts_checks};
use taskhost_fixtures::redis::RedisServer;

/// A host whose heartbeat key expired (deleted here, as an expiry would)
/// is gone: the shared registry check, then `holders` lists none of its batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_heartbeat_expired_loses_its_leases_at_once() {
    let server = RedisServer::start().unwrap();
    let open =
        || RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let (a, b) = (open(), open());
    let expire = async {
        server.command(&["DEL", "taskhost:host:host-a"]).unwrap();
    };
    hosts_checks::a_gone_host_loses_its_leases_at_once(&a, &b, expire).await;
    let left = server
        .command(&["ZRANGE", "taskhost:{jobs}:holders", "0", "-1"])
        .unwrap();
    assert!(!left.contains("host-a"), "{left}");
    a.close().await;
    b.close().await;
}

/// `request_reload` reaches a listening host and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_reaches_a_listening_host() {
    let server = RedisServer::start().unwrap();
    let store = RedisStore::open(&server.url(), RedisOptions::default(), clock::system()).unwrap();
    let reg = store.registry();
    let ask = async {
        // Subscribing takes a moment: ask until one host heard.
        let mut asked = 0;
        for _ in 0..500 {
            asked = reg.request_reload().await.unwrap();
            if asked > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(asked, 1);
    };
    hosts_checks::a_reload_arrives(&reg, ask).await;
    store.close().await;
}

//! The connection to Redis: one server (`redis://`, `rediss://`) through a
//! reconnecting [`ConnectionManager`], or a Redis Cluster
//! (`redis+cluster://`, `rediss+cluster://`, seed nodes separated by
//! commas) through the cluster-aware client, which follows `MOVED` and
//! `ASK` and refreshes its slot map after a failover.
//!
//! Both are one [`Conn`], so the rest of the backend sends commands the
//! same way; the cluster client routes a script call by its first key.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{RedisOptions, redact};

/// A connection to one Redis server or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server; reconnects in the background after an error.
    Single(ConnectionManager),
    /// A cluster; routes each command to the master of its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a connection could not be set up.
pub(super) enum ConnError {
    /// The client refused the URL.
    Redis(redis::RedisError),
    /// The URL or the CA file is wrong; the message says how.
    Config(String),
}

impl From<redis::RedisError> for ConnError {
    fn from(e: redis::RedisError) -> Self {
        ConnError::Redis(e)
    }
}

/// What a queue URL opens: the command connection and one plain client per
/// node named in the URL, for pub/sub (cluster pub/sub reaches every node,
/// so any one serves; the listeners move on to the next when one fails).
pub(super) struct Opened {
    pub(super) conn: Conn,
    pub(super) pubsub: Vec<redis::Client>,
}

/// Opens `url` lazily (nothing is dialled until the first command).
///
/// Must be called inside a tokio runtime.
pub(super) fn open(url: &str, opts: &RedisOptions) -> Result<Opened, ConnError> {
    let pem = opts.ca_file.as_deref().map(read_ca).transpose()?;
    let ca = opts.ca_file.as_deref().zip(pem.as_deref());
    match cluster_nodes(url)? {
        None => {
            let client = client(url, ca)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.connect_timeout))
                .set_response_timeout(Some(opts.response_timeout))
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
            Ok(Opened {
                conn: Conn::Single(conn),
                pubsub: vec![client],
            })
        }
        Some(nodes) => {
            let pubsub = nodes
                .iter()
                .map(|n| client(n, ca))
                .collect::<Result<Vec<_>, _>>()?;
            let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(opts.connect_timeout)
                .response_timeout(opts.response_timeout)
                // Few resends: a script whose answer was lost may have run,
                // and a resent push would add its tasks twice.
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(2_000);
            if let Some((_, pem)) = ca {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                });
            }
            let client = builder.build()?;
            let cfg = ClusterConfig::new()
                .set_connection_timeout(opts.connect_timeout)
                .set_response_timeout(opts.response_timeout);
            Ok(Opened {
                conn: Conn::Cluster(client.get_pending_async_connection_with_config(cfg)),
                pubsub,
            })
        }
    }
}

/// The node URLs of a cluster URL (`redis+cluster://[user:pass@]h1:p1,h2:p2`,
/// or `rediss+cluster://` for TLS), each with the same credentials; `None`
/// for a single-server URL.
pub(super) fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, ConnError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let node_scheme = match scheme.to_ascii_lowercase().as_str() {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return Ok(None),
    };
    let bad = |why: &str| ConnError::Config(format!("queue URL {}: {why}", redact(url)));
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{node_scheme}://{userinfo}{h}{tail}"))
        .collect();
    if nodes.is_empty() {
        return Err(bad(
            "a cluster URL names at least one node, as HOST:PORT[,HOST:PORT...]",
        ));
    }
    Ok(Some(nodes))
}

/// The PEM text of `[redis] ca_file`, checked to hold a certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, ConnError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConnError::Config(format!("redis.ca_file {}: {e}", path.display())))?;
    if !pem.windows(17).any(|w| w == b"BEGIN CERTIFICATE") {
        return Err(ConnError::Config(format!(
            "redis.ca_file {}: no `BEGIN CERTIFICATE` block in it",
            path.display()
        )));
    }
    Ok(pem)
}

/// A client for one server's `url`: `rediss://` speaks TLS (rustls)
/// trusting `ca` (the `ca_file` path and its PEM text), or the bundled
/// Mozilla roots without one; ACL users log in with
/// `redis[s]://USER:PASSWORD@host`.
fn client(url: &str, ca: Option<(&Path, &[u8])>) -> Result<redis::Client, ConnError> {
    let Some((file, pem)) = ca else {
        return Ok(redis::Client::open(url)?);
    };
    if !url.starts_with("rediss://") {
        return Err(ConnError::Config(format!(
            "redis.ca_file {} is set, but the queue URL {} is not rediss:// (TLS)",
            file.display(),
            redact(url)
        )));
    }
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(url: &str) -> Option<Vec<String>> {
        match cluster_nodes(url) {
            Ok(n) => n,
            Err(ConnError::Config(m)) => panic!("{m}"),
            Err(ConnError::Redis(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn a_cluster_url_names_each_seed_node_with_the_same_credentials() {
        assert_eq!(nodes("redis://127.0.0.1:6379/0"), None);
        assert_eq!(
            nodes("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001"),
            Some(vec![
                "redis://u:p@10.0.0.1:7000".to_owned(),
                "redis://u:p@10.0.0.2:7001".to_owned()
            ])
        );
        assert_eq!(
            nodes("rediss+cluster://a:1,b:2/0"),
            Some(vec![
                "rediss://a:1/0".to_owned(),
                "rediss://b:2/0".to_owned()
            ])
        );
        match cluster_nodes("redis+cluster://u:secret@") {
            Err(ConnError::Config(m)) => {
                assert!(m.contains("HOST:PORT") && !m.contains("secret"), "{m}")
            }
            _ => panic!("an empty node list is refused"),
        }
    }
}

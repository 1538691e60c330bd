//! Many real `host run` processes sharing one PostgreSQL queue, on a
//! private server started by the test (never the machine's own). The
//! scenarios are the shared ones of `multihost.rs`.

use crate::multihost;
use taskhost_fixtures::postgres::PostgresServer;

multihost::every_scenario!(
    PostgresServer as "postgres",
    start: PostgresServer::start().unwrap(),
    durable: PostgresServer::start().unwrap(),
    crash: stop_immediate,
    recover: restart_immediate,
);

//! Many real `host run` processes sharing one PostgreSQL queue, on a
//! private server started by the test (never the machine's own). The
//! scenarios are the shared ones of `multihost.rs`.

use crate::multihost::{self, Outage};
use taskhost_fixtures::postgres::PostgresServer;

impl Outage for PostgresServer {
    fn down(&mut self) {
        self.stop_immediate();
    }

    fn up(&mut self) {
        self.restart_immediate().unwrap();
    }
}

multihost::every_scenario!(
    "postgres",
    start: PostgresServer::start().unwrap(),
    durable: PostgresServer::start().unwrap()
);

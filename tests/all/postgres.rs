//! Many real `host run` processes sharing one PostgreSQL queue, on a
//! private server started by the test (never the machine's own). The
//! scenarios are the shared ones of `multihost.rs`.

use crate::multihost::{self, Outage, Store};
use taskhost_fixtures::postgres::PostgresServer;

impl Outage for PostgresServer {
    fn down(&mut self) {
        self.stop_immediate();
    }

    fn up(&mut self) {
        self.restart_immediate().unwrap();
    }
}

fn store(url: &str) -> Store<'_> {
    Store::new("postgres", url)
}

fn server() -> PostgresServer {
    PostgresServer::start().unwrap()
}

#[test]
fn five_hosts_drain_a_postgres_queue_each_task_exactly_once() {
    let pg = server();
    multihost::hosts_drain_each_task_exactly_once(store(&pg.url()));
}

#[test]
fn a_host_killed_mid_run_on_postgres_loses_nothing() {
    let pg = server();
    multihost::a_killed_host_loses_nothing(store(&pg.url()));
}

/// `pg_ctl restart -m immediate` mid-run.
#[test]
fn hosts_survive_a_postgres_immediate_restart_mid_run() {
    let mut pg = server();
    let url = pg.url();
    // The URL is named with its user info hidden.
    let shown = url.split('@').nth(1).unwrap_or(&url).to_owned();
    multihost::hosts_survive_an_outage(store(&url), &shown, &mut pg);
}

#[test]
fn a_unique_key_is_never_handled_by_two_hosts_at_once_on_postgres() {
    let pg = server();
    multihost::a_unique_key_is_never_handled_twice_at_once(store(&pg.url()));
}

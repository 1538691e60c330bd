//! docs/postgres.md is run: against a private PostgreSQL, the page's role
//! and grant blocks set up a host role that owns only the schema and a
//! producer role that may only call `taskhost.push`; the page's Python
//! example (psycopg from PyPI, installed into `target/langs/pg-venv` at the
//! version `docs/postgres-requirements.txt` pins) rolls one transaction back
//! and commits another: only the committed task exists, exactly once, and
//! `host run` handles it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::langs::{pip_venv, run};
use crate::support::*;
use taskhost_fixtures::postgres::{PostgresServer, bin_dir};

fn page() -> String {
    std::fs::read_to_string(root().join("docs/postgres.md")).unwrap()
}

/// The page's fenced blocks of `lang`, in order.
fn blocks(page: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("closed block");
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    out
}

/// The one block of `lang` containing `marker`.
fn block(page: &str, lang: &str, marker: &str) -> String {
    let found: Vec<_> = blocks(page, lang)
        .into_iter()
        .filter(|b| b.contains(marker))
        .collect();
    assert_eq!(found.len(), 1, "one {lang} block with {marker:?}");
    found[0].clone()
}

/// A virtualenv with the pinned psycopg; installed on first use.
fn psycopg_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let requirements = root().join("docs/postgres-requirements.txt");
        pip_venv(
            "pg-venv",
            &requirements,
            &["python", "-c", "import psycopg"],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

/// `psql` beside the server's binaries, else on `PATH`.
fn psql_bin() -> PathBuf {
    bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into())
}

/// Runs `sql` as the superuser; returns psql's unaligned output.
fn psql(pg: &PostgresServer, sql: &str) -> String {
    let out = Command::new(psql_bin())
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-d", &pg.url()])
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether `role` may run `sql` (psql as that role).
fn may(pg: &PostgresServer, role: &str, sql: &str) -> bool {
    let url = pg.url().replacen("postgres@", &format!("{role}@"), 1);
    Command::new(psql_bin())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
        .output()
        .unwrap()
        .status
        .success()
}

fn queue_status(url: &str, queue: &str) -> serde_json::Value {
    let json = ok(host().args(["status", "--json", "--queue", queue, "--queue-url", url]));
    serde_json::from_str::<serde_json::Value>(&json).unwrap()[0].clone()
}

#[test]
fn the_postgres_page_runs_with_minimal_grants_and_its_python_producer_commits_once() {
    let page = page();
    let pg = PostgresServer::start().unwrap();
    // The page's role block: the host's role owns the schema, nothing more.
    psql(
        &pg,
        &block(&page, "sql", "CREATE SCHEMA taskhost AUTHORIZATION"),
    );
    psql(
        &pg,
        "CREATE ROLE app LOGIN;
         CREATE TABLE executions (id text PRIMARY KEY, status text NOT NULL);
         GRANT SELECT, INSERT ON executions TO app;",
    );
    let host_url = pg.url().replacen("postgres@", "taskhost@", 1);
    // The host migrates the schema it owns, without CREATE on the database.
    assert!(!may(&pg, "taskhost", "CREATE SCHEMA other"));
    let status = ok(host().args(["status", "--queue-url", &host_url]));
    assert!(!status.is_empty());
    assert_eq!(
        psql(&pg, "SELECT max(version) FROM taskhost.schema_migrations"),
        taskhost::queue::postgres::SCHEMA_VERSION.to_string()
    );
    // Before the grants the producer may not push; after them it may push
    // and nothing else.
    let push = "SELECT taskhost.push('other', 'x'::bytea)";
    assert!(!may(&pg, "app", push));
    psql(&pg, &block(&page, "sql", "GRANT USAGE ON SCHEMA"));
    assert!(!may(&pg, "app", "SELECT count(*) FROM taskhost.tasks"));
    assert!(!may(
        &pg,
        "app",
        "INSERT INTO taskhost.tasks (queue, payload, enqueued_at, visible_at) VALUES ('q', 'x', 0, 0)"
    ));
    assert!(!may(
        &pg,
        "app",
        "SELECT taskhost.push_at('q', 'x', NULL, 0, 0)"
    ));

    // The page's Python producer.
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("producer.py");
    std::fs::write(&script, block(&page, "python", "taskhost.push")).unwrap();
    let app_url = pg.url().replacen("postgres@", "app@", 1);
    run(
        "the page's Python example",
        Command::new(psycopg_venv().join("bin/python"))
            .arg(&script)
            .env("DATABASE_URL", &app_url),
    );
    assert_eq!(
        psql(&pg, "SELECT string_agg(id, ',') FROM executions"),
        "exec-2"
    );
    let s = queue_status(&host_url, "status-refresh");
    assert_eq!(s["pending"], 1, "only the committed push made a task: {s}");
    let peek = ok(host().args(["peek", "status-refresh", "--json", "--queue-url", &host_url]));
    assert!(peek.contains("exec-2 running"), "{peek}");
    assert!(!peek.contains("exec-1"), "{peek}");

    // A host handles it.
    handled_once(tmp.path(), &host_url);
}

/// Runs `host run --exit-when-drained` with the archive plugin on queue
/// `status-refresh`; checks it archived the one committed task.
fn handled_once(tmp: &Path, url: &str) {
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = HostToml::new(&tmp.join("data"))
        .backend("postgres")
        .string("queue_url", url)
        .plugin(&plugin("archive"))
        .string("queue", "status-refresh")
        .dir(&out, "/out")
        .raw("config", r#"{ dir = "/out" }"#)
        .write(tmp.join("host.toml"));
    ok(host()
        .args(["run", "--exit-when-drained", "--config"])
        .arg(&config));
    let done = archived(&out);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done.get("exec-2 running"), Some(&1), "{done:?}");
    let s = queue_status(url, "status-refresh");
    assert_eq!(s["pending"], 0, "{s}");
}

//! Requests/s of the pooled client over TLS against a
//! loopback server (certificate made at start), HTTP/2 and HTTP/1.1
//! keep-alive, against one TLS connection per request (how https:// was
//! served before it was pooled) and plain pooled http:// for reference.
//!
//! `cargo bench -p taskhost --bench https_client -- [OPTIONS]`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use taskhost::http::{HttpClient, HttpOptions};
use taskhost_fixtures::http::{CountingServer, Handler};
use taskhost_fixtures::tls::loopback_tls;
use tokio::task::JoinSet;

mod common;

fn main() -> ExitCode {
    common::main(bench_https)
}

/// Options of the HTTPS client bench.
#[derive(Debug, Args)]
struct HttpsBenchArgs {
    /// Requests per row.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Callers sending at once (also the pool's per-host concurrency).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// One row of the table.
struct Row {
    name: &'static str,
    connections: u64,
    http2: u64,
    elapsed: Duration,
}

/// Runs every row and prints the table.
async fn bench_https(a: HttpsBenchArgs) -> Result<()> {
    anyhow::ensure!(
        a.requests > 0 && a.concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    let dir = tempfile::tempdir().context("temporary directory for the CA")?;
    let ca_file = dir.path().join("ca.pem");
    let mut rows = Vec::new();
    // (row, TLS with h2 offered?, idle connections kept per host)
    let plan: [(&'static str, Option<bool>, usize); 4] = [
        ("https, pooled, HTTP/2", Some(true), a.concurrency),
        (
            "https, pooled, HTTP/1.1 keep-alive",
            Some(false),
            a.concurrency,
        ),
        ("https, one connection per request", Some(false), 0),
        ("http, pooled, HTTP/1.1 keep-alive", None, a.concurrency),
    ];
    for (name, tls, idle) in plan {
        let ok: Handler =
            Arc::new(|_, _| http::Response::new(Full::new(Bytes::from_static(b"ok"))));
        let server = match tls {
            Some(http2) => {
                let (ca_pem, cfg) = loopback_tls(http2)
                    .map_err(|e| anyhow::anyhow!("making the loopback certificate: {e}"))?;
                std::fs::write(&ca_file, ca_pem).context("writing the CA file")?;
                CountingServer::start_tls(ok, cfg).await
            }
            None => CountingServer::start(ok).await,
        }
        .context("starting the loopback server")?;
        let client = HttpClient::new(HttpOptions {
            pool_idle_per_host: idle,
            host_concurrency: a.concurrency,
            ca_file: Some(ca_file.clone()),
            ..HttpOptions::default()
        })
        .context("starting the HTTP client")?;
        eprintln!("running {name}: {} requests ...", a.requests);
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        for w in 0..a.concurrency {
            let client = client.clone();
            let url = format!("{}/w{w}", server.url());
            let n = a.requests / a.concurrency + usize::from(w < a.requests % a.concurrency);
            set.spawn(async move {
                for _ in 0..n {
                    let req = http::Request::get(&url)
                        .body(Bytes::new())
                        .context("building the request")?;
                    let resp = client
                        .send(req)
                        .await
                        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
                    anyhow::ensure!(resp.status() == 200, "GET {url} answered {}", resp.status());
                    resp.into_body()
                        .collect()
                        .await
                        .context("reading the answer")?;
                }
                Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("a caller panicked")??;
        }
        let elapsed = t0.elapsed();
        let s = server.stats();
        rows.push(Row {
            name,
            connections: s.connections.load(Ordering::Relaxed),
            http2: s.http2.load(Ordering::Relaxed),
            elapsed,
        });
        server.shutdown().await;
    }
    println!(
        "\n{} requests per row, {} callers at once, loopback server\n",
        a.requests, a.concurrency
    );
    println!("| Client | Connections | HTTP/2 requests | Requests/s |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} |",
            r.name,
            r.connections,
            r.http2,
            a.requests as f64 / r.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

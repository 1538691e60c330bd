//! The listener: binding, the token rule, the accept loop and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ApiConfig, ApiState, router};
use crate::metrics::Metrics;
use crate::queue::QueueStore;

/// Parses `[api] listen`: an IP socket address, or `localhost:PORT`.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    let text = match listen.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => listen.to_owned(),
    };
    text.parse().map_err(|_| {
        format!("api.listen {listen:?} is not an address like 127.0.0.1:7878 or [::1]:7878")
    })
}

/// A running listener.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<ApiState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds `cfg.listen` and starts serving. Refuses a non-loopback address
    /// without `token_file`, and a token file that is missing or empty.
    pub async fn start(
        cfg: &ApiConfig,
        listen: &str,
        queues: Arc<dyn QueueStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let addr = parse_listen(listen).map_err(anyhow::Error::msg)?;
        let token = match &cfg.token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading [api] token_file {}", p.display()))?;
                let t = text.trim();
                if t.is_empty() {
                    bail!("[api] token_file {} is empty", p.display());
                }
                Some(t.to_owned())
            }
            None if addr.ip().is_loopback() => None,
            None => bail!(
                "refusing to listen on {addr}: it is not a loopback address, so the API needs \
                 a bearer token; set [api] token_file in the config file"
            ),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        let state = Arc::new(ApiState {
            queues,
            metrics,
            token,
            max_body_bytes: cfg.max_body_bytes,
            plugins_loaded: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        tracing::info!(%addr, "api listening");
        Ok(Self {
            addr,
            state,
            stop,
            task,
        })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Marks every plugin loaded: `/readyz` answers 200 from now on (if the
    /// backend answers).
    pub fn set_ready(&self) {
        self.state.plugins_loaded.store(true, Ordering::Release);
    }

    /// Stops accepting, lets requests in flight finish, and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "api listener task failed");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
            // Reap finished connections so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: log, wait, go on.
                tracing::warn!(error = %e, "api: accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, stop) = (state.clone(), stop.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(router::route(&state, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "api connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

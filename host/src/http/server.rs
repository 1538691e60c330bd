//! A small HTTP server on loopback that counts TCP connections and the
//! protocol version of each request: the stand-in for a remote service in
//! tests and benchmarks. Plain (HTTP/1.1) or TLS (HTTP/1.1, and HTTP/2 when
//! its TLS settings offer `h2` by ALPN).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Answers one request, given its head and whole body.
pub type Handler = Arc<dyn Fn(http::request::Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync>;

/// Counters of a [`CountingServer`].
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Of those, requests that came as HTTP/2.
    pub http2: AtomicU64,
    /// TLS handshakes that failed (the client did not trust the server, say).
    pub tls_failures: AtomicU64,
}

/// A loopback HTTP server counting connections and requests.
pub struct CountingServer {
    addr: SocketAddr,
    tls: bool,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CountingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CountingServer {
    /// Starts serving plain HTTP on a free port of 127.0.0.1.
    pub async fn start(handler: Handler) -> std::io::Result<Self> {
        Self::start_with(handler, None).await
    }

    /// Starts serving HTTPS on a free port of 127.0.0.1 (see [`tls_config`]).
    pub async fn start_tls(
        handler: Handler,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::start_with(handler, Some(TlsAcceptor::from(tls))).await
    }

    async fn start_with(handler: Handler, tls: Option<TlsAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let stop = CancellationToken::new();
        let is_tls = tls.is_some();
        let task = tokio::spawn(serve(listener, tls, handler, stats.clone(), stop.clone()));
        Ok(Self {
            addr,
            tls: is_tls,
            stats,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` if it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Stops accepting, closes every connection and waits for them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Server TLS settings for a certificate chain and its key, offering
/// HTTP/2 and HTTP/1.1 by ALPN, or HTTP/1.1 only.
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// A throwaway CA and a certificate for 127.0.0.1 and localhost signed by
/// it: the CA's PEM (what a client's `ca_file` must hold to trust the
/// server) and server TLS settings for [`CountingServer::start_tls`].
pub fn loopback_tls(
    http2: bool,
) -> Result<(String, Arc<rustls::ServerConfig>), Box<dyn std::error::Error + Send + Sync>> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "taskhost loopback CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?
        .signed_by(&key, &ca)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let tls = tls_config(vec![leaf.der().clone()], key, http2)?;
    Ok((ca.pem(), tls))
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        while conns.try_join_next().is_some() {}
        let handler = handler.clone();
        let stats = stats.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => connection(stream, handler, stats, stop).await,
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        a = acceptor.accept(stream) => a,
                        _ = stop.cancelled() => return,
                    };
                    match accepted {
                        Ok(stream) => connection(stream, handler, stats, stop).await,
                        Err(_) => {
                            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    conns.shutdown().await;
}

/// Serves one connection (HTTP/1.1, or HTTP/2 if the client starts with its
/// preface) until the client closes it or the server stops.
async fn connection<S>(
    stream: S,
    handler: Handler,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let stats = stats.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if parts.version == http::Version::HTTP_2 {
                stats.http2.fetch_add(1, Ordering::Relaxed);
            }
            stats.requests.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(handler(parts, body))
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

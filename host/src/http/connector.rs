//! A connector that caps open connections per destination host.
//!
//! The concurrency permit alone cannot bound connections: a response body
//! still being read keeps its connection busy after the permit is back, and
//! the pool would open another. Each connection holds a per-host permit for
//! its whole life, so a host never sees more than the cap.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type HttpConnector =
    hyper_util::client::legacy::connect::HttpConnector<super::allow::GuardedResolver>;

/// [`HttpConnector`] with at most `per_host` open connections per host.
#[derive(Debug, Clone)]
pub struct CappedConnector {
    inner: HttpConnector,
    per_host: usize,
    caps: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl CappedConnector {
    /// Wraps `inner`.
    pub fn new(inner: HttpConnector, per_host: usize) -> Self {
        Self {
            inner,
            per_host: per_host.max(1),
            caps: Arc::default(),
        }
    }

    fn cap(&self, uri: &Uri) -> Arc<Semaphore> {
        super::shared_entry(&self.caps, &host_key(uri), || Semaphore::new(self.per_host))
    }
}

/// A connection and the permit it holds while open.
#[derive(Debug)]
pub struct CappedConn {
    io: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for CappedConnector {
    type Response = CappedConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CappedConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let cap = self.cap(&uri);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = cap
                .acquire_owned()
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            let io = inner.call(uri).await.map_err(|e| Box::new(e) as BoxError)?;
            Ok(CappedConn {
                io,
                _permit: permit,
            })
        })
    }
}

impl Connection for CappedConn {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CappedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CappedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// How long a superseded connect waits before failing (see [`H2Gate`]).
pub const SUPERSEDED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the last https connection to a host negotiated.
#[derive(Debug, Default)]
struct Negotiated {
    /// Held while connecting to a host not known to speak HTTP/1.1 only.
    connecting: tokio::sync::Mutex<()>,
    /// The last connection negotiated HTTP/1.1 (connect freely, up to the cap).
    http1: std::sync::atomic::AtomicBool,
    /// HTTP/2 connections made so far.
    h2_made: std::sync::atomic::AtomicU64,
    /// When the last HTTP/2 connection was made.
    last_h2: Mutex<Option<tokio::time::Instant>>,
}

/// A connect asked for this soon after an HTTP/2 connection to the same
/// host was made counts as superseded too: hyper-util asks for it when a
/// request arrives after that connection's connect finished but before its
/// handshake put it in the pool, and the request gets that connection.
pub const H2_HANDSHAKE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Above the TLS layer: one https connect at a time to a host that may
/// speak HTTP/2, so a burst of requests opens one multiplexed connection
/// instead of one each. hyper-util's pool keeps only the first connection
/// that negotiates h2 and hands it to every waiting request, so a connect
/// that waited behind one that made an h2 connection (or was asked for
/// within [`H2_HANDSHAKE_WINDOW`] of one) opens nothing: it
/// fails after [`SUPERSEDED_GRACE`], by which time its request has the
/// shared connection (hyper-util then drops the failure unseen; failing at
/// once could beat the h2 handshake and reach the request). Hosts that
/// answer HTTP/1.1 connect in parallel as before; plain http:// is passed
/// through untouched.
#[derive(Debug, Clone)]
pub struct H2Gate<C> {
    inner: C,
    hosts: Arc<Mutex<HashMap<String, Arc<Negotiated>>>>,
}

impl<C> H2Gate<C> {
    /// Wraps the TLS connector `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            hosts: Arc::default(),
        }
    }

    fn host(&self, uri: &Uri) -> Arc<Negotiated> {
        super::shared_entry(&self.hosts, &host_key(uri), Negotiated::default)
    }
}

/// The destination a connection is for: host and port, case-folded.
fn host_key(uri: &Uri) -> String {
    super::destination(uri).unwrap_or_default()
}

impl<C> tower_service::Service<Uri> for H2Gate<C>
where
    C: tower_service::Service<Uri, Error = BoxError> + Clone + Send + 'static,
    C::Response: Connection + Send,
    C::Future: Send,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Box::pin(self.inner.call(uri));
        }
        use std::sync::atomic::Ordering::SeqCst;
        let host = self.host(&uri);
        let made_before = host.h2_made.load(SeqCst);
        // The clone is ready: HttpsConnector's readiness is its TCP
        // connector's, which always is.
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut one = if host.http1.load(SeqCst) {
                None
            } else {
                Some(host.connecting.lock().await)
            };
            let recent = host
                .last_h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() < H2_HANDSHAKE_WINDOW);
            if host.h2_made.load(SeqCst) > made_before || recent {
                drop(one);
                tokio::time::sleep(SUPERSEDED_GRACE).await;
                return Err(
                    "superseded: an HTTP/2 connection to this host opened meanwhile".into(),
                );
            }
            if host.http1.load(SeqCst) {
                // HTTP/1.1 after all: each request needs its own connection.
                one = None;
            }
            let conn = inner.call(uri).await?;
            // Recorded before the lock goes, so the next in line sees it.
            if conn.connected().is_negotiated_h2() {
                host.http1.store(false, SeqCst);
                host.h2_made.fetch_add(1, SeqCst);
                *host.last_h2.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(tokio::time::Instant::now());
            } else {
                host.http1.store(true, SeqCst);
            }
            drop(one);
            Ok(conn)
        })
    }
}

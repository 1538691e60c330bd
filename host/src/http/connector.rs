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
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
        let key = uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .unwrap_or_default();
        let mut caps = self.caps.lock().unwrap_or_else(|p| p.into_inner());
        caps.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
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

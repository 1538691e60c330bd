//! Pooled outbound HTTP for plugins, behind `wasi:http/outgoing-handler`.
//!
//! Every plugin's requests go through one process-wide [`HttpClient`]: one
//! keep-alive connection pool (idle connections per host configurable), so
//! 10,000 requests to one server reuse a handful of connections instead of
//! opening one each (act_runner's `MaxIdleConnsPerHost=2` lesson). http://
//! and https:// share it; over TLS the client offers ALPN `h2` and
//! `http/1.1`, so a server that speaks HTTP/2 gets every request multiplexed
//! on one connection. Per
//! plugin, [`AllowedHosts`] fails closed: a plugin that lists no host makes
//! no request. Per destination host, a concurrency limit and a rate limit
//! hold requests back; 429 and 503 answers are retried by the host with
//! back-off honouring `Retry-After`, within a per-request deadline. The
//! deadline is the host's own: a guest's epoch deadline cannot interrupt a
//! host call.

mod allow;
mod connector;
pub mod counts;
mod deadline;
mod limit;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

use crate::backoff::Backoff;
use crate::clock;
pub use allow::{AllowedHosts, GuardedResolver, is_public};
use deadline::DeadlineBody;
pub use limit::HostGate;
pub use tls::TlsError;

/// Settings of the shared client and of every destination host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpOptions {
    /// Idle keep-alive connections kept per destination host.
    pub pool_idle_per_host: usize,
    /// An idle connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Requests in flight to, and connections open to, one host at a time
    /// (more wait, they do not fail).
    pub host_concurrency: usize,
    /// Requests per second started to one host; unlimited if unset.
    pub host_rate: Option<f64>,
    /// Requests one host may receive at once before the rate applies.
    pub host_burst: u32,
    /// Longest one request may take, retries and waits included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Back-off between retries of a 429/503 answer without `Retry-After`.
    pub retry_backoff: Backoff,
    /// Most retries of one request after 429/503.
    pub max_retries: u32,
    /// Largest request body a plugin may send (it is buffered for retries).
    pub max_body_bytes: usize,
    /// PEM file of extra CA certificates https:// servers may chain to (a
    /// private CA), trusted besides the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            pool_idle_per_host: 10,
            idle_timeout: Duration::from_secs(90),
            host_concurrency: 16,
            host_rate: None,
            host_burst: 10,
            deadline: Duration::from_secs(30),
            retry_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            max_retries: 5,
            max_body_bytes: 16 << 20,
            ca_file: None,
        }
    }
}

/// Counters of the shared client.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests plugins made (each counted once, however often retried).
    pub requests: AtomicU64,
    /// Requests refused because the host is not allowed.
    pub refused: AtomicU64,
    /// Retries after 429/503.
    pub retries: AtomicU64,
    /// Requests and retries per destination host and answer status.
    pub per_host: counts::PerHost,
}

/// The host's one pooled HTTP client, shared by every plugin.
#[derive(Debug)]
pub struct HttpClient {
    client: Client<connector::H2Gate<HttpsConnector<connector::CappedConnector>>, Full<Bytes>>,
    resolver: allow::GuardedResolver,
    opts: HttpOptions,
    gates: Mutex<HashMap<String, Arc<HostGate>>>,
    stats: HttpStats,
}

impl HttpClient {
    /// A client with its own connection pool; fails if `ca_file` cannot be used.
    pub fn new(opts: HttpOptions) -> Result<Arc<Self>, TlsError> {
        let resolver = allow::GuardedResolver::default();
        let mut tcp = HttpConnector::new_with_resolver(resolver.clone());
        tcp.set_nodelay(true);
        // The TLS layer above hands https:// URIs down for the TCP part.
        tcp.enforce_http(false);
        let connector = connector::H2Gate::new(
            HttpsConnectorBuilder::new()
                .with_tls_config(tls::client_config(opts.ca_file.as_deref())?)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(connector::CappedConnector::new(tcp, opts.host_concurrency)),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.pool_idle_per_host)
            .pool_idle_timeout(opts.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Self {
            client,
            resolver,
            opts,
            gates: Mutex::default(),
            stats: HttpStats::default(),
        }))
    }

    /// The client's settings.
    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// The client's counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// The limits of one destination, keyed by host and port (never by the
    /// raw authority: userinfo must not buy a fresh gate).
    fn gate(&self, key: &str) -> Arc<HostGate> {
        shared_entry(&self.gates, key, || {
            HostGate::new(
                self.opts.host_concurrency,
                self.opts.host_rate,
                self.opts.host_burst,
            )
        })
    }

    /// Sends a buffered request through the pool: waits for the host's
    /// concurrency and rate limits, retries 429/503 within the deadline.
    pub async fn send(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<hyper::body::Incoming>, HttpError> {
        self.send_until(req, clock::deadline_in(self.opts.deadline))
            .await
    }

    async fn send_until(
        &self,
        req: Request<Bytes>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<hyper::body::Incoming>, HttpError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let authority = destination(req.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
        let gate = self.gate(&authority);
        let (parts, body) = req.into_parts();
        let mut retries = 0u32;
        loop {
            let mut attempt = Request::new(Full::new(body.clone()));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.headers_mut() = parts.headers.clone();
            let sent = tokio::time::timeout_at(deadline, async {
                let _permit = gate.acquire().await;
                self.client.request(attempt).await
            })
            .await;
            let per_host = &self.stats.per_host;
            let resp = match sent {
                Err(_) => {
                    per_host.request(&authority, "timeout");
                    return Err(HttpError::HttpResponseTimeout);
                }
                Ok(Err(e)) => {
                    per_host.request(&authority, "error");
                    return Err(client_error(e, &authority));
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
                || retries >= self.opts.max_retries
            {
                per_host.request(&authority, status.as_str());
                return Ok(resp);
            }
            retries += 1;
            let wait = retry_after(resp.headers(), std::time::SystemTime::now())
                .unwrap_or_else(|| self.opts.retry_backoff.delay(retries));
            // A wait past the deadline (or past the end of time: the header
            // comes from outside) leaves no time for another try.
            if tokio::time::Instant::now()
                .checked_add(wait)
                .is_none_or(|at| at >= deadline)
            {
                per_host.request(&authority, status.as_str());
                return Ok(resp);
            }
            // Read the short error body so the connection goes back to the pool.
            let _ = tokio::time::timeout_at(deadline, resp.into_body().collect()).await;
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            per_host.retry(&authority);
            tracing::debug!(%authority, %status, ?wait, retries, "retrying after back-pressure");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Most destinations whose per-host state is remembered at once.
const MAX_DESTINATIONS: usize = 1024;

/// The per-destination state for `key`, made on first use. Wildcard entries
/// can name endless hosts, so a full map first forgets idle entries (held
/// by nothing but the map).
fn shared_entry<V>(
    map: &Mutex<HashMap<String, Arc<V>>>,
    key: &str,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= MAX_DESTINATIONS && !m.contains_key(key) {
        m.retain(|_, v| Arc::strong_count(v) > 1);
    }
    m.entry(key.to_owned())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

/// `host:port` of a URI, lower-case, the scheme's default port filled in.
fn destination(uri: &http::Uri) -> Option<String> {
    let host = allow::normalize_host(uri.host()?);
    let port = uri.port_u16().unwrap_or_else(|| default_port(uri));
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn default_port(uri: &http::Uri) -> u16 {
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    }
}

fn client_error(e: hyper_util::client::legacy::Error, authority: &str) -> HttpError {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<allow::NonPublicAddress>() {
            tracing::warn!(%authority, "outbound request refused: {refused}");
            return HttpError::HttpRequestDenied;
        }
        source = s.source();
    }
    if let Some(code) = tls::error_code(&e) {
        // The code tells the plugin what failed; the log says why.
        tracing::warn!(%authority, error = ?e, "TLS handshake failed: {code}");
        code
    } else if e.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::InternalError(Some(format!("{e:#}")))
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date.
pub fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

type BoxFut<T> = Box<dyn Future<Output = T> + Send>;

/// One plugin's view of outbound HTTP: its allowed hosts and the shared client.
#[derive(Debug, Clone)]
pub struct PluginHttp {
    plugin: Arc<str>,
    allowed: Arc<AllowedHosts>,
    client: Arc<HttpClient>,
}

impl PluginHttp {
    /// The hooks for one plugin.
    pub fn new(plugin: &str, allowed: AllowedHosts, client: Arc<HttpClient>) -> Self {
        client.resolver.allow_names(allowed.exact_names());
        Self {
            plugin: plugin.into(),
            allowed: Arc::new(allowed),
            client,
        }
    }

    async fn serve(
        self,
        req: Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<Response<wasmtime_wasi_http::WasiBody>, HttpError> {
        let deadline = clock::deadline_in(self.client.opts.deadline);
        let uri = req.uri();
        if uri.scheme() != Some(&http::uri::Scheme::HTTP)
            && uri.scheme() != Some(&http::uri::Scheme::HTTPS)
        {
            tracing::warn!(plugin = &*self.plugin, %uri, "outbound request refused: scheme is neither http nor https");
            return Err(HttpError::HttpRequestUriInvalid);
        }
        // Address literals match only entries naming them; names are
        // checked again as they resolve (GuardedResolver).
        let host = uri.host().unwrap_or_default();
        if !self
            .allowed
            .permits(host, uri.port_u16(), default_port(uri))
        {
            self.client.stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = destination(uri) {
                self.client.stats.per_host.request(&d, "refused");
            }
            tracing::warn!(plugin = &*self.plugin, %uri, "outbound request refused: host not in allowed_hosts");
            return Err(HttpError::HttpRequestDenied);
        }
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, self.client.opts.max_body_bytes)
            .collect()
            .await
            .map_err(|_| HttpError::HttpRequestBodySize(None))?
            .to_bytes();
        let resp = self
            .client
            .send_until(Request::from_parts(parts, body), deadline)
            .await?;
        Ok(resp.map(|b| DeadlineBody::new(b.map_err(HttpError::from), deadline).boxed_unsync()))
    }
}

impl WasiHttpHooks for PluginHttp {
    fn send_request(
        &mut self,
        request: Request<wasmtime_wasi_http::WasiBody>,
        // The guest's per-request time-outs are not applied: connections
        // are shared, and the host's `deadline` bounds every request.
        _options: Option<RequestOptions>,
        fut: BoxFut<Result<(), HttpError>>,
    ) -> BoxFut<
        Result<
            (
                Response<wasmtime_wasi_http::WasiBody>,
                BoxFut<Result<(), HttpError>>,
            ),
            HttpError,
        >,
    > {
        drop(fut);
        let this = self.clone();
        Box::new(async move {
            let resp = this.serve(request).await?;
            Ok((resp, Box::new(async { Ok(()) }) as BoxFut<_>))
        })
    }
}

#[cfg(test)]
mod tests;

//! The pooled client against a real server on 127.0.0.1.

use http::HeaderMap;
use tokio::task::JoinSet;

use super::*;
use taskhost_fixtures::http::{CountingServer, Handler, too_many_requests};

fn ok() -> Handler {
    Arc::new(|_, body| Response::new(Full::new(body)))
}

fn get(url: &str) -> Request<Bytes> {
    Request::get(url).body(Bytes::new()).unwrap()
}

#[tokio::test]
async fn ten_thousand_requests_reuse_the_pool() {
    let server = CountingServer::start(ok()).await.unwrap();
    let client = HttpClient::new(HttpOptions {
        pool_idle_per_host: 8,
        host_concurrency: 8,
        ..HttpOptions::default()
    })
    .unwrap();
    let mut set = JoinSet::new();
    for w in 0..32 {
        let client = client.clone();
        let url = format!("{}/w{w}", server.url());
        set.spawn(async move {
            for _ in 0..(10_000 / 32 + 1) {
                let resp = client.send(get(&url)).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let conns = server.stats().connections.load(Ordering::Relaxed);
    let reqs = server.stats().requests.load(Ordering::Relaxed);
    assert!(reqs >= 10_000);
    assert!(
        conns <= 8,
        "{reqs} requests opened {conns} connections (pool 8)"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn back_pressure_is_retried_honouring_retry_after() {
    let server = CountingServer::start_numbered(|n| match n {
        0 => too_many_requests("1"),
        1 => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"later")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        _ => Response::new(Full::new(Bytes::from_static(b"done"))),
    })
    .await
    .unwrap();
    let client = HttpClient::new(HttpOptions {
        retry_backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
        ..HttpOptions::default()
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    let resp = client.send(get(&server.url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"done"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(server.stats().requests.load(Ordering::Relaxed), 3);
    assert_eq!(client.stats().retries.load(Ordering::Relaxed), 2);
    assert_eq!(server.stats().connections.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_retry_that_would_pass_the_deadline_hands_the_answer_back() {
    let server = CountingServer::start(Arc::new(|_, _| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, "3600".parse().unwrap());
        r
    }))
    .await
    .unwrap();
    let client = HttpClient::new(HttpOptions::default()).unwrap();
    let resp = client.send(get(&server.url())).await.unwrap();
    assert_eq!(resp.status(), 503, "the plugin sees the answer at once");
    assert_eq!(server.stats().requests.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mut h = HeaderMap::new();
    assert_eq!(retry_after(&h, now), None);
    h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
    h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
    assert_eq!(retry_after(&h, now), None);
}

#[test]
fn allowed_hosts_fail_closed() {
    let none = AllowedHosts::new(&[]);
    assert!(!none.permits("127.0.0.1", Some(80), 80));
    let some = AllowedHosts::new(&[
        "api.example.com".into(),
        "127.0.0.1:8080".into(),
        "*.corp.test".into(),
        "any.test:*".into(),
        "[::1]:9000".into(),
    ]);
    assert!(some.permits("API.example.com", None, 443));
    assert!(some.permits("api.example.com", Some(443), 443));
    assert!(some.permits("127.0.0.1", Some(8080), 80));
    assert!(!some.permits("127.0.0.1", Some(8081), 80));
    assert!(some.permits("a.b.corp.test", None, 443));
    assert!(!some.permits("corp.test", None, 443));
    assert!(!some.permits("example.com", None, 443));
    assert!(some.permits("any.test", Some(1), 80));
    assert!(some.permits("[::1]", Some(9000), 80));
}

#[test]
fn a_bare_host_means_the_scheme_default_port() {
    let some = AllowedHosts::new(&["api.example.com".into(), "*.corp.test".into()]);
    assert!(!some.permits("api.example.com", Some(22), 443));
    assert!(!some.permits("api.example.com", Some(6379), 80));
    assert!(!some.permits("x.corp.test", Some(8443), 443));
    assert!(some.permits("api.example.com", Some(80), 80));
    // A wildcard never matches an address literal.
    let wild = AllowedHosts::new(&["*.0.0.1".into()]);
    assert!(!wild.permits("127.0.0.1", None, 80));
}

#[test]
fn non_public_addresses_are_told_apart() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
    ] {
        assert!(!is_public(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
        assert!(is_public(ip.parse().unwrap()), "{ip}");
    }
}

async fn plugin_get(
    hooks: &mut PluginHttp,
    url: &str,
) -> Result<Response<wasmtime_wasi_http::WasiBody>, HttpError> {
    let body = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = Request::get(url).body(body).unwrap();
    let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
    std::pin::Pin::from(fut).await.map(|(resp, _)| resp)
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_unless_named_exactly() {
    use tower_service::Service;
    let name = |n: &str| {
        n.parse::<hyper_util::client::legacy::connect::dns::Name>()
            .unwrap()
    };
    let mut resolver = GuardedResolver::default();
    let err = resolver.call(name("localhost")).await.expect_err("refused");
    assert!(err.to_string().contains("non-public"), "{err}");
    resolver.allow_names(["localhost"].into_iter());
    let addrs: Vec<_> = resolver.call(name("localhost")).await.unwrap().collect();
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");

    // Through a plugin: an exact entry may name a loopback host.
    let server = CountingServer::start(ok()).await.unwrap();
    let port = server.addr().port();
    let client = HttpClient::new(HttpOptions::default()).unwrap();
    let mut exact = PluginHttp::new(
        "e",
        AllowedHosts::new(&[format!("localhost:{port}")]),
        client.clone(),
    );
    let resp = plugin_get(&mut exact, &format!("http://localhost:{port}/"))
        .await
        .expect("an exact entry may name loopback");
    assert_eq!(resp.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_response_body_that_never_ends_fails_at_the_deadline() {
    // Headers, then a body that never completes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let _ = hold_rx.await;
    });
    let client = HttpClient::new(HttpOptions {
        deadline: Duration::from_millis(300),
        ..HttpOptions::default()
    })
    .unwrap();
    let mut hooks = PluginHttp::new("p", AllowedHosts::new(&[addr.to_string()]), client);
    let resp = plugin_get(&mut hooks, &format!("http://{addr}/"))
        .await
        .unwrap();
    let err = resp.into_body().collect().await.expect_err("body fails");
    assert!(matches!(err, HttpError::ConnectionReadTimeout), "{err:?}");
    drop(hold_tx);
    server.await.unwrap();
}

#[tokio::test]
async fn a_retry_after_past_the_end_of_time_neither_panics_nor_waits() {
    for value in [
        "18446744073709551615",
        "9223372036854775808",
        "99999999999999999999",
    ] {
        let server = CountingServer::start(Arc::new(move |_, _| too_many_requests(value)))
            .await
            .unwrap();
        let client = HttpClient::new(HttpOptions {
            retry_backoff: crate::backoff::Backoff::new(Duration::ZERO, Duration::ZERO),
            max_retries: 1,
            ..HttpOptions::default()
        })
        .unwrap();
        let resp = client.send(get(&server.url())).await.unwrap();
        assert_eq!(resp.status(), 429, "Retry-After: {value}");
        server.shutdown().await;
    }
}

#[test]
fn limits_from_configuration_never_overflow() {
    let _ = HostGate::new(1, Some(1e-300), u32::MAX);
    let huge = crate::backoff::Backoff::new(Duration::MAX, Duration::MAX);
    assert!(huge.delay(64) > Duration::ZERO);
    assert!(crate::clock::deadline_in(Duration::MAX) > tokio::time::Instant::now());
}

#[tokio::test]
async fn userinfo_does_not_buy_a_fresh_gate() {
    let client = HttpClient::new(HttpOptions::default()).unwrap();
    let a = client.gate(&destination(&"http://u1@Example.com/".parse().unwrap()).unwrap());
    let b = client.gate(&destination(&"http://u2:x@example.com:80/".parse().unwrap()).unwrap());
    assert!(Arc::ptr_eq(&a, &b));
}

#[tokio::test]
async fn a_plugin_request_to_an_unlisted_host_is_refused_without_a_connection() {
    let server = CountingServer::start(ok()).await.unwrap();
    let client = HttpClient::new(HttpOptions::default()).unwrap();
    let mut hooks = PluginHttp::new(
        "p",
        AllowedHosts::new(&["other.test".into()]),
        client.clone(),
    );
    let body = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = Request::get(server.url()).body(body).unwrap();
    let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
    let err = std::pin::Pin::from(fut).await.err().unwrap();
    assert!(matches!(err, HttpError::HttpRequestDenied), "{err:?}");
    assert_eq!(client.stats().refused.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats().connections.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn host_gate_holds_the_rate_after_a_burst() {
    let gate = HostGate::new(100, Some(10.0), 3);
    let t0 = tokio::time::Instant::now();
    let mut starts = Vec::new();
    for _ in 0..6 {
        let _p = gate.acquire().await;
        starts.push(t0.elapsed().as_millis() as u64);
    }
    assert_eq!(starts, [0, 0, 0, 100, 200, 300]);
}

#[test]
fn an_unusable_ca_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let opts = |ca: &std::path::Path| HttpOptions {
        ca_file: Some(ca.to_owned()),
        ..HttpOptions::default()
    };
    let err = HttpClient::new(opts(&missing)).unwrap_err().to_string();
    assert!(
        err.contains("http.ca_file") && err.contains("missing.pem"),
        "{err}"
    );
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = HttpClient::new(opts(&junk)).unwrap_err().to_string();
    assert!(err.contains("no `BEGIN CERTIFICATE`"), "{err}");
}

#[tokio::test]
async fn a_scheme_other_than_http_or_https_is_refused() {
    let client = HttpClient::new(HttpOptions::default()).unwrap();
    let mut hooks = PluginHttp::new("p", AllowedHosts::new(&["example.com".into()]), client);
    let body = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = Request::get("ftp://example.com/x").body(body).unwrap();
    let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
    let err = std::pin::Pin::from(fut).await.err().unwrap();
    assert!(matches!(err, HttpError::HttpRequestUriInvalid), "{err:?}");
}

//! Method + path to a route group, the bearer check and the body limit.
//!
//! Each route group is one file; [`route`] offers the request to each in
//! turn. A group answers [`Routed::Pass`] for paths that are not its own.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::error::ApiError;
use super::{ApiState, control, dashboard, dead, health, hosts, peek, plugins, queues, tasks};

/// A request as hyper hands it over.
pub type Req = http::Request<hyper::body::Incoming>;
/// A response.
pub type Resp = http::Response<Full<Bytes>>;
/// A route's answer.
pub type Answer = Result<Resp, ApiError>;

/// What a route group did with a request.
pub enum Routed {
    /// It was the group's: this is the answer.
    Answer(Answer),
    /// Not the group's: the request, untouched.
    Pass(Req),
}

/// Answers one request.
pub async fn route(st: &ApiState, req: Req) -> Resp {
    match route_inner(st, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn route_inner(st: &ApiState, req: Req) -> Answer {
    let path = req.uri().path().to_owned();
    let segs = split_path(&path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    // Probes stay open so an orchestrator needs no token.
    let probe = method == Method::GET && matches!(segs.as_slice(), ["healthz"] | ["readyz"]);
    if !probe && !dashboard::is_asset(&method, &segs) {
        authorize(st, &req)?;
    }
    let mut req = req;
    for group in [
        Group::Health,
        Group::Tasks,
        Group::Queues,
        Group::Peek,
        Group::Dead,
        Group::Control,
        Group::Hosts,
        Group::Plugins,
        Group::Dashboard,
    ] {
        let routed = match group {
            Group::Health => health::route(st, &method, &segs, req).await,
            Group::Tasks => tasks::route(st, &method, &segs, req).await,
            Group::Queues => queues::route(st, &method, &segs, req).await,
            Group::Peek => peek::route(st, &method, &segs, req).await,
            Group::Dead => dead::route(st, &method, &segs, req).await,
            Group::Control => control::route(st, &method, &segs, req).await,
            Group::Hosts => hosts::route(st, &method, &segs, req).await,
            Group::Plugins => plugins::route(st, &method, &segs, req).await,
            Group::Dashboard => dashboard::route(st, &method, &segs, req).await,
        };
        match routed {
            Routed::Answer(a) => return a,
            Routed::Pass(r) => req = r,
        }
    }
    Err(ApiError::not_found(format!("no route for {method} {path}")))
}

/// The route groups, in the order they are asked.
#[derive(Clone, Copy)]
enum Group {
    Health,
    Tasks,
    Queues,
    Peek,
    Dead,
    Dashboard,
    Plugins,
    Control,
    Hosts,
}

/// Checks `Authorization: Bearer TOKEN` when a token is set.
fn authorize(st: &ApiState, req: &Req) -> Result<(), ApiError> {
    let Some(token) = &st.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this listener needs Authorization: Bearer TOKEN (the token in [api] token_file)",
        )),
    }
}

/// Compares without stopping at the first difference, so timing does not
/// reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path's segments, percent-decoded.
fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad_request(format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("path segment {s:?} is not UTF-8")))
}

/// Reads the whole body, refusing more than `max` bytes with 413.
pub async fn read_body(req: Req, max: usize) -> Result<Bytes, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max} bytes ([api] max_body_bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// Checks a queue name from a path, as 400.
pub fn queue_name(name: &str) -> Result<(), ApiError> {
    crate::queue::validate_name(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

//! The web dashboard: `GET /` and its assets under `/ui/`, embedded in the
//! binary (plain HTML, CSS and JavaScript; no build step, no CDN). The page
//! reads and changes everything through the API, so it needs no route of
//! its own beyond these files.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;

use super::ApiState;
use super::router::{Req, Resp, Routed};

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Whether a request is for the dashboard's files: they hold no data, so
/// they are served without a token (the page asks for one when the API
/// answers 401).
pub fn is_asset(method: &Method, segs: &[&str]) -> bool {
    method == Method::GET && matches!(segs, [] | ["ui", "app.js" | "style.css"])
}

/// Routes the dashboard's files.
pub async fn route(_st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    if !is_asset(method, segs) {
        return Routed::Pass(req);
    }
    let (body, kind) = match segs {
        ["ui", "app.js"] => (APP, "text/javascript; charset=utf-8"),
        ["ui", "style.css"] => (STYLE, "text/css; charset=utf-8"),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    Routed::Answer(Ok(asset(body, kind)))
}

fn asset(body: &'static str, kind: &str) -> Resp {
    let mut r = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    if let Ok(v) = kind.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    // The page only talks to this origin.
    if let Ok(v) = "default-src 'self'; style-src 'self'; img-src 'self' data:".parse() {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    if let Ok(v) = "no-cache".parse() {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

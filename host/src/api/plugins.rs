//! `GET /v1/plugins`: each plugin this host runs (handlers, then sources),
//! its version history (loaded, swapped, refused with the reason), calls
//! per version by result with p50/p99 duration, and its pool's totals.

use http::{Method, StatusCode};
use serde_json::json;

use super::ApiState;
use super::error::json_response;
use super::router::{Req, Routed};

/// Routes `GET /v1/plugins`.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::GET, ["v1", "plugins"]) => Routed::Answer(Ok(json_response(
            StatusCode::OK,
            &json!({ "plugins": st.metrics.plugins() }),
        ))),
        _ => Routed::Pass(req),
    }
}

//! `GET /v1/plugins`: each plugin this host runs, its live version, the
//! batches started per version, and its pool's totals.

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

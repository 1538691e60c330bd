//! `GET /healthz`, `GET /readyz`, `GET /metrics` and `GET /v1/openapi.json`.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, json_response};
use super::router::{Req, Routed};

/// The committed OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

/// Routes the health, metrics and document endpoints.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    if *method != Method::GET {
        return Routed::Pass(req);
    }
    match segs {
        ["healthz"] => Routed::Answer(Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
        ["readyz"] => {
            let plugins = st.plugins_loaded.load(Ordering::Acquire);
            let backend = st.metrics.backend_up().await;
            if plugins && backend {
                Routed::Answer(Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": "ready"}),
                )))
            } else {
                let why = if backend {
                    "plugins are still loading"
                } else {
                    "the queue backend does not answer"
                };
                Routed::Answer(Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
                    .with("backend_up", backend.into())
                    .with("plugins_loaded", plugins.into())))
            }
        }
        ["metrics"] => Routed::Answer(Ok(text(
            st.metrics.render().await,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))),
        ["v1", "openapi.json"] => Routed::Answer(Ok(text(OPENAPI.to_owned(), "application/json"))),
        _ => Routed::Pass(req),
    }
}

fn text(body: String, content_type: &'static str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

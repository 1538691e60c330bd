//! Operator route group: `GET /v1/hosts` (every live host on the backend,
//! from its host registry) and `POST /v1/hosts/reload` (asks each of them to
//! reload its plugins).

use http::{Method, StatusCode};
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, json_response};
use super::router::{Answer, Req, Routed};

/// Routes the fleet endpoints.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::GET, ["v1", "hosts"]) => Routed::Answer(list(st).await),
        (&Method::POST, ["v1", "hosts", "reload"]) => Routed::Answer(reload(st).await),
        _ => Routed::Pass(req),
    }
}

fn unavailable(e: crate::queue::QueueError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn list(st: &ApiState) -> Answer {
    let hosts = crate::fleet::hosts(&*st.queues.registry())
        .await
        .map_err(unavailable)?;
    Ok(json_response(StatusCode::OK, &json!({ "hosts": hosts })))
}

async fn reload(st: &ApiState) -> Answer {
    let asked = st
        .queues
        .registry()
        .request_reload()
        .await
        .map_err(unavailable)?;
    Ok(json_response(StatusCode::OK, &json!({ "asked": asked })))
}

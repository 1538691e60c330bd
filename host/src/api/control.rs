//! Operator route group: `DELETE /v1/queues/{q}/tasks/{id}` (cancel a
//! pending or delayed task), `POST /v1/queues/{q}/tasks/{id}/run` (run a
//! delayed task now), `POST /v1/queues/{q}/pause` and `/resume` (durable,
//! obeyed by every host on the backend).

use http::{Method, StatusCode};
use serde_json::json;

use super::ApiState;
use super::admin::{admin, admin_error, done_as, open};
use super::error::{ApiError, json_response};
use super::router::{Answer, Req, Routed};

/// Routes the control endpoints.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    let answer = match (method, segs) {
        (&Method::DELETE, ["v1", "queues", q, "tasks", id]) => cancel(st, q, id, false).await,
        (&Method::POST, ["v1", "queues", q, "tasks", id, "run"]) => cancel(st, q, id, true).await,
        (&Method::POST, ["v1", "queues", q, "pause"]) => pause(st, q, true).await,
        (&Method::POST, ["v1", "queues", q, "resume"]) => pause(st, q, false).await,
        _ => return Routed::Pass(req),
    };
    Routed::Answer(answer)
}

async fn cancel(st: &ApiState, queue: &str, id: &str, run_now: bool) -> Answer {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("task id {id:?} is not a number")))?;
    let q = open(st, queue)?;
    let a = admin(&*q)?;
    if run_now {
        done_as("run_now", a.run_now(id).await.map(|()| id))
    } else {
        done_as("cancelled", a.cancel(id).await.map(|()| id))
    }
}

async fn pause(st: &ApiState, queue: &str, paused: bool) -> Answer {
    let q = open(st, queue)?;
    admin(&*q)?.set_paused(paused).await.map_err(admin_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "queue": queue, "paused": paused }),
    ))
}

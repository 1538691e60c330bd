//! Operator route group: `GET /v1/queues/{q}/tasks?state=&limit=&after=`,
//! tasks of one state without taking them, paged by id.

use http::{Method, StatusCode};
use serde_json::json;

use super::ApiState;
use super::admin::{admin, admin_error, open, task_json};
use super::error::{ApiError, json_response};
use super::router::{Answer, Req, Routed};
use crate::queue::admin::{MAX_PEEK, TaskState};

/// Routes the peek endpoint.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::GET, ["v1", "queues", q, "tasks"]) => {
            let query = req.uri().query().unwrap_or("").to_owned();
            Routed::Answer(peek(st, q, &query).await)
        }
        _ => Routed::Pass(req),
    }
}

async fn peek(st: &ApiState, queue: &str, query: &str) -> Answer {
    let mut state = TaskState::Pending;
    let mut limit = 100usize;
    let mut after = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let bad = |what: &str| ApiError::bad_request(format!("query {k}={v:?}: {what}"));
        match &*k {
            "state" => state = v.parse().map_err(|e: String| bad(&e))?,
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| bad(&format!("a number from 1 to {MAX_PEEK}")))?
            }
            "after" => after = Some(v.parse().map_err(|_| bad("a task id"))?),
            _ => return Err(bad("unknown parameter (state, limit, after)")),
        }
    }
    let q = open(st, queue)?;
    let tasks = admin(&*q)?
        .peek(state, after, limit)
        .await
        .map_err(admin_error)?;
    let next = tasks.last().map(|t| t.id);
    let tasks: Vec<_> = tasks.iter().map(task_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "queue": queue, "state": state.as_str(), "tasks": tasks, "next_after": next }),
    ))
}

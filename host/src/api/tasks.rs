//! `POST /v1/queues/{queue}/tasks`: the producer API.
//!
//! The body is NDJSON (one task record per line) or, with
//! `Content-Type: application/json`, `{"tasks": [record, ...]}`; records
//! are parsed by [`super::record`], the same code as `host push --format
//! ndjson`. Every record is checked before any is stored (a bad one: 400,
//! nothing stored). Tasks go to the backend in calls of [`CHUNK`], each
//! all-or-nothing; if one fails, the answer (503) says how many were
//! committed by the calls before it.

use std::time::Instant;

use http::{Method, StatusCode};

use super::ApiState;
use super::error::{ApiError, typed_json_response};
use super::record;
use super::router::{Answer, Req, Routed, queue_name, read_body};
use crate::queue::Pushed;

/// Tasks per backend call.
pub const CHUNK: usize = 1_000;

/// What became of one task.
#[derive(serde::Serialize)]
struct TaskAnswer {
    result: &'static str,
    id: u64,
}

/// The answer to a push.
#[derive(serde::Serialize)]
struct PushAnswer {
    created: u64,
    duplicate: u64,
    tasks: Vec<TaskAnswer>,
}

/// Routes `POST /v1/queues/{queue}/tasks`.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::POST, ["v1", "queues", queue, "tasks"]) => {
            Routed::Answer(push(st, queue, req).await)
        }
        _ => Routed::Pass(req),
    }
}

async fn push(st: &ApiState, queue: &str, req: Req) -> Answer {
    queue_name(queue)?;
    let json_envelope = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    let body = read_body(req, st.max_body_bytes).await?;
    let parsed = if json_envelope {
        record::parse_envelope(&body)
    } else {
        record::parse_ndjson(&body)
    };
    let tasks = parsed.map_err(|e| {
        ApiError::bad_request(format!("{e}; nothing was stored")).with("committed", 0.into())
    })?;
    let total = tasks.len() as u64;
    let q = st
        .queues
        .queue(queue)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut answers = Vec::with_capacity(tasks.len());
    let (mut created, mut duplicate) = (0u64, 0u64);
    let mut tasks = tasks.into_iter();
    loop {
        // Moved, not copied, into each backend call.
        let chunk: Vec<_> = tasks.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        let chunk_len = chunk.len() as u64;
        let started = Instant::now();
        let out = q.push_batch(chunk).await;
        st.metrics.backend_op("push", started.elapsed());
        match out {
            Ok(out) => {
                for p in out {
                    answers.push(match p {
                        Pushed::Created(id) => {
                            created += 1;
                            TaskAnswer {
                                result: "created",
                                id,
                            }
                        }
                        Pushed::Duplicate(id) => {
                            duplicate += 1;
                            TaskAnswer {
                                result: "duplicate",
                                id,
                            }
                        }
                    });
                }
            }
            Err(e) => {
                let committed = created + duplicate;
                st.metrics
                    .pushed(queue, created, duplicate, total - committed);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "storing tasks {}-{} failed, none of them stored: {e}; \
                         the {committed} tasks before them were committed",
                        committed + 1,
                        committed + chunk_len
                    ),
                )
                .with("committed", committed.into())
                .with("created", created.into())
                .with("duplicate", duplicate.into()));
            }
        }
    }
    st.metrics.pushed(queue, created, duplicate, 0);
    Ok(typed_json_response(
        StatusCode::OK,
        &PushAnswer {
            created,
            duplicate,
            tasks: answers,
        },
    ))
}

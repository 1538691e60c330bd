//! What the operator route groups share: the queue's admin actions, their
//! errors as HTTP statuses, and a task as JSON.

use base64::Engine as _;
use http::StatusCode;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::router::queue_name;
use std::sync::Arc;

use crate::queue::admin::{AdminError, PeekedTask, QueueAdmin};
use crate::queue::{BaseQueue, QueueError};

/// Queue `name`, checked to have operator actions (see [`admin`]).
pub fn open(st: &ApiState, name: &str) -> Result<Arc<dyn BaseQueue>, ApiError> {
    queue_name(name)?;
    let q = st.queues.queue(name).map_err(unavailable)?;
    admin(&*q)?;
    Ok(q)
}

/// The operator actions of `q`: 501 for a backend without them.
pub fn admin(q: &dyn BaseQueue) -> Result<&dyn QueueAdmin, ApiError> {
    q.admin().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("queue {:?}: this backend has no operator actions", q.name()),
        )
    })
}

/// A backend failure: 503, naming the cause.
pub fn unavailable(e: QueueError) -> ApiError {
    match e {
        QueueError::Config(m) => ApiError::bad_request(m),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// An operator action's failure as an HTTP status.
pub fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::Queue(q) => unavailable(q),
        e @ AdminError::Leased { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        e @ AdminError::NotFound { .. } => ApiError::not_found(e.to_string()),
    }
}

/// An operator action's answer: `200 {"key": value}`, or its failure.
pub fn done_as(
    key: &str,
    result: Result<impl serde::Serialize, AdminError>,
) -> super::router::Answer {
    let value = result.map_err(admin_error)?;
    Ok(super::error::json_response(
        StatusCode::OK,
        &json!({ key: value }),
    ))
}

/// A task as the API shows it: text payloads as `payload`, others as
/// `payload_base64` (the producer API's record shape).
pub fn task_json(t: &PeekedTask) -> Value {
    let mut v = json!({
        "id": t.id,
        "unique_key": t.unique_key,
        "attempt": t.attempt,
        "enqueued_at_ms": t.enqueued_at_ms,
        "at_ms": t.at_ms,
    });
    match std::str::from_utf8(&t.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => {
            v["payload_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&t.payload))
        }
    }
    if let Some(d) = &t.dead {
        v["reason"] = json!(d.reason);
        v["failed_at_ms"] = json!(d.failed_at_ms);
    }
    v
}

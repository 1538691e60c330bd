//! Operator route group: `POST /v1/queues/{q}/dead/retry` and
//! `DELETE /v1/queues/{q}/dead`, for all dead letters of a queue or, with a
//! body `{"ids": [...]}`, only those.

use http::Method;

use super::ApiState;
use super::admin::{admin, done_as, open};
use super::error::ApiError;
use super::router::{Answer, Req, Routed, read_body};
use crate::queue::admin::Which;

/// Routes the dead-letter endpoints.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::POST, ["v1", "queues", q, "dead", "retry"]) => {
            let q = (*q).to_owned();
            Routed::Answer(act(st, &q, req, true).await)
        }
        (&Method::DELETE, ["v1", "queues", q, "dead"]) => {
            let q = (*q).to_owned();
            Routed::Answer(act(st, &q, req, false).await)
        }
        _ => Routed::Pass(req),
    }
}

/// Which dead letters a body names: no body, `{}` or no `ids` mean all.
fn which(body: &[u8]) -> Result<Which, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Which::All);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        ids: Option<Vec<u64>>,
    }
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: {e} (expected {{\"ids\": [1, 2]}})")))?;
    Ok(b.ids.map_or(Which::All, Which::Ids))
}

async fn act(st: &ApiState, queue: &str, req: Req, retry: bool) -> Answer {
    let body = read_body(req, st.max_body_bytes).await?;
    let which = which(&body)?;
    let q = open(st, queue)?;
    let a = admin(&*q)?;
    if retry {
        done_as("retried", a.retry_dead(which).await)
    } else {
        done_as("deleted", a.purge_dead(which).await)
    }
}

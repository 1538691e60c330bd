//! `GET /v1/queues`: counts by state of every queue the backend knows.

use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, json_response};
use super::router::{Answer, Req, Routed};

/// Routes `GET /v1/queues`.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::GET, ["v1", "queues"]) => Routed::Answer(list(st).await),
        _ => Routed::Pass(req),
    }
}

fn admin_unavailable(e: crate::queue::admin::AdminError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn list(st: &ApiState) -> Answer {
    let unavailable =
        |e: crate::queue::QueueError| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let started = Instant::now();
    let names = st.queues.known_queues().await.map_err(unavailable)?;
    st.metrics.backend_op("known_queues", started.elapsed());
    let mut queues = Vec::with_capacity(names.len());
    for name in names {
        let q = st.queues.queue(&name).map_err(unavailable)?;
        let started = Instant::now();
        let s = q.stats().await.map_err(unavailable)?;
        st.metrics.backend_op("stats", started.elapsed());
        // Paused, and how long the oldest pending task has waited (what
        // Sidekiq calls a queue's latency).
        let (paused, oldest) = match q.admin() {
            Some(a) => {
                let paused = a.is_paused().await.map_err(admin_unavailable)?;
                let now = crate::clock::system().now_ms();
                let age = crate::queue::admin::oldest_pending_age(a, now)
                    .await
                    .map_err(admin_unavailable)?;
                (paused, age)
            }
            None => (false, None),
        };
        queues.push(json!({
            "queue": name,
            "pending": s.pending,
            "delayed": s.delayed,
            "leased": s.leased,
            "dead": s.dead,
            "paused": paused,
            "oldest_pending_age_seconds": oldest,
        }));
    }
    Ok(json_response(StatusCode::OK, &json!({ "queues": queues })))
}

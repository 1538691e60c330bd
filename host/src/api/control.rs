//! Operator route group: `DELETE /v1/queues/{q}/tasks/{id}` (cancel a
//! pending or delayed task), `POST /v1/queues/{q}/pause` and `/resume`.
//!
//! Not wired yet: it goes on the backends' cancel and durable pause (being
//! built beside this listener).

use http::Method;

use super::ApiState;
use super::router::{Req, Routed};

/// Routes the queue-control endpoints (none yet: every request passes on, so 404).
pub async fn route(_st: &ApiState, _method: &Method, _segs: &[&str], req: Req) -> Routed {
    Routed::Pass(req)
}

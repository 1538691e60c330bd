//! Operator route group: `POST /v1/queues/{q}/dead/retry` (all, or
//! `{"ids": [...]}`) and `DELETE /v1/queues/{q}/dead` (purge).
//!
//! Not wired yet: it goes on the backends' dead-letter retry and purge
//! (being built beside this listener).

use http::Method;

use super::ApiState;
use super::router::{Req, Routed};

/// Routes the dead-letter endpoints (none yet: every request passes on, so 404).
pub async fn route(_st: &ApiState, _method: &Method, _segs: &[&str], req: Req) -> Routed {
    Routed::Pass(req)
}

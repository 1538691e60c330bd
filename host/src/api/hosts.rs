//! Operator route group: `GET /v1/hosts` (every live host on the backend)
//! and `POST /v1/hosts/reload`.
//!
//! Not wired yet: it goes on the host registry (being built beside this
//! listener).

use http::Method;

use super::ApiState;
use super::router::{Req, Routed};

/// Routes the fleet endpoints (none yet: every request passes on, so 404).
pub async fn route(_st: &ApiState, _method: &Method, _segs: &[&str], req: Req) -> Routed {
    Routed::Pass(req)
}

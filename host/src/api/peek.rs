//! Operator route group: `GET /v1/queues/{q}/tasks?state=&limit=&after=`
//! (look at tasks without taking them).
//!
//! Not wired yet: it goes on the backends' peek (being built beside this
//! listener). Match the path here and answer; everything else passes on.

use http::Method;

use super::ApiState;
use super::router::{Req, Routed};

/// Routes the peek endpoint (none yet: every request passes on, so 404).
pub async fn route(_st: &ApiState, _method: &Method, _segs: &[&str], req: Req) -> Routed {
    Routed::Pass(req)
}

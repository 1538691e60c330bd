//! `GET /v1/queues`: counts by state of the queues the backend knows,
//! all of them, or paged by name on the server (`limit`, `after`), filtered
//! by a substring of the name (`filter`) or to queues holding dead letters
//! (`has_dead=true`), so a page over 1,000 queues reads the backend only
//! for the queues it shows.

use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, json_response};
use super::router::{Answer, Req, Routed};

/// Most queues one page may ask for.
pub const MAX_PAGE: usize = 1000;

/// Routes `GET /v1/queues`.
pub async fn route(st: &ApiState, method: &Method, segs: &[&str], req: Req) -> Routed {
    match (method, segs) {
        (&Method::GET, ["v1", "queues"]) => {
            let query = req.uri().query().unwrap_or("").to_owned();
            Routed::Answer(list(st, &query).await)
        }
        _ => Routed::Pass(req),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// What the query string asks for.
#[derive(Debug, Default)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
    filter: Option<String>,
    has_dead: bool,
}

fn parse(query: &str) -> Result<Page, ApiError> {
    let mut p = Page::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let bad = |what: &str| ApiError::bad_request(format!("query {k}={v:?}: {what}"));
        match &*k {
            "limit" => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(&format!("a number from 1 to {MAX_PAGE}")))?;
                p.limit = Some(n);
            }
            "after" => p.after = Some(v.into_owned()),
            "filter" => p.filter = Some(v.into_owned()).filter(|f| !f.is_empty()),
            "has_dead" => {
                p.has_dead = v.parse().map_err(|_| bad("true or false"))?;
            }
            _ => return Err(bad("unknown parameter (limit, after, filter, has_dead)")),
        }
    }
    Ok(p)
}

/// One queue's row, and whether it holds dead letters.
async fn row(st: &ApiState, name: String) -> Result<(Value, bool), ApiError> {
    let q = st.queues.queue(&name).map_err(unavailable)?;
    let started = Instant::now();
    let s = q.stats().await.map_err(unavailable)?;
    st.metrics.backend_op("stats", started.elapsed());
    // Paused, and how long the oldest pending task has waited (what
    // Sidekiq calls a queue's latency).
    let (paused, oldest) = match q.admin() {
        Some(a) => {
            let paused = a.is_paused().await.map_err(unavailable)?;
            let now = crate::clock::system().now_ms();
            let age = crate::queue::admin::oldest_pending_age(a, now)
                .await
                .map_err(unavailable)?;
            (paused, age)
        }
        None => (false, None),
    };
    let row = json!({
        "queue": name,
        "pending": s.pending,
        "delayed": s.delayed,
        "leased": s.leased,
        "dead": s.dead,
        "paused": paused,
        "oldest_pending_age_seconds": oldest,
    });
    Ok((row, s.dead > 0))
}

async fn list(st: &ApiState, query: &str) -> Answer {
    let page = parse(query)?;
    let started = Instant::now();
    let mut names = st.queues.known_queues().await.map_err(unavailable)?;
    st.metrics.backend_op("known_queues", started.elapsed());
    names.sort_unstable();
    if let Some(f) = &page.filter {
        names.retain(|n| n.contains(f.as_str()));
    }
    let matching = names.len();
    if let Some(after) = &page.after {
        names.retain(|n| n > after);
    }
    let limit = page.limit.unwrap_or(usize::MAX);
    let mut queues = Vec::new();
    let mut more = false;
    for name in names {
        if queues.len() == limit {
            // Without the dead-letter condition the next name is a row.
            more = !page.has_dead || row(st, name).await?.1;
            if more || !page.has_dead {
                break;
            }
            continue;
        }
        let (r, dead) = row(st, name).await?;
        if dead || !page.has_dead {
            queues.push(r);
        }
    }
    let next_after = if more {
        queues
            .last()
            .and_then(|q| q["queue"].as_str())
            .map(str::to_owned)
    } else {
        None
    };
    let mut body = json!({ "queues": queues, "next_after": next_after });
    if !page.has_dead {
        // Queues matching the filter, every page together.
        body["total"] = json!(matching);
    }
    Ok(json_response(StatusCode::OK, &body))
}

//! The HTTP listener: producer API, operator API, health, `/metrics`.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`ApiConfig`] (`[api]` in the config file) and [`ApiState`] |
//! | `server.rs` | [`ApiServer`]: binding, the token rule, accept loop, shutdown |
//! | `router.rs` | method + path to route group; bearer check; body limit |
//! | `error.rs` | [`ApiError`]: `{"error": "..."}` with its status |
//! | `record.rs` | task records, shared with `host push --format ndjson` |
//! | `tasks.rs` | `POST /v1/queues/{queue}/tasks` (producer API) |
//! | `queues.rs` | `GET /v1/queues` |
//! | `health.rs` | `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/openapi.json` |
//! | `peek.rs`, `dead.rs`, `control.rs`, `hosts.rs` | operator route groups (peek; dead retry/purge; cancel, pause, resume; hosts, reload) |
//! | `plugins.rs` | `GET /v1/plugins` (this host's plugins: version history, per-version results and quantiles, totals) |
//! | `dashboard.rs` | the web page at `/` and its embedded assets (`dashboard/`) |
//!
//! Loopback listeners need no token; any other address needs
//! `[api] token_file`, and every request but the health checks then carries
//! `Authorization: Bearer TOKEN`.

mod admin;
mod control;
mod dashboard;
mod dead;
mod error;
mod health;
mod hosts;
mod peek;
mod plugins;
mod queues;
pub mod record;
mod router;
mod server;
mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

pub use self::error::ApiError;
pub use self::server::ApiServer;
use crate::metrics::Metrics;
use crate::queue::QueueStore;

/// `[api]`: the HTTP listener's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, e.g. `127.0.0.1:7878`; none: no listener.
    pub listen: Option<String>,
    /// File holding the bearer token; required unless `listen` is loopback.
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            token_file: None,
            max_body_bytes: 16 << 20,
        }
    }
}

impl ApiConfig {
    /// Checks values the listener cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("api.max_body_bytes must be at least 1".into());
        }
        if let Some(l) = &self.listen {
            let addr = server::parse_listen(l)?;
            if !addr.ip().is_loopback() && self.token_file.is_none() {
                return Err(format!(
                    "api.listen {l:?} is not a loopback address: the API then needs a bearer \
                     token, so set api.token_file (a file holding the token)"
                ));
            }
        }
        Ok(())
    }
}

/// What every route reads.
#[derive(Debug)]
pub struct ApiState {
    /// The backend's queues.
    pub queues: Arc<dyn QueueStore>,
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// Bearer token every request must carry, if any.
    pub token: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Set once every plugin is loaded (`/readyz`).
    pub plugins_loaded: AtomicBool,
}

/// Starts the listener `[api] listen` asks for, with fresh metrics over
/// `queues`; none when no address is set.
pub async fn start_for_run(
    cfg: &ApiConfig,
    queues: &Arc<dyn QueueStore>,
) -> anyhow::Result<Option<(ApiServer, Arc<Metrics>)>> {
    let Some(listen) = &cfg.listen else {
        return Ok(None);
    };
    let metrics = Metrics::new(queues.clone());
    let server = ApiServer::start(cfg, listen, queues.clone(), metrics.clone()).await?;
    Ok(Some((server, metrics)))
}

//! `host serve`: the HTTP API and `/metrics` over the queues, without
//! running plugins (an operator's or a producer gateway's node).

use anyhow::{Result, bail};
use clap::Args;
use taskhost::api::ApiServer;
use taskhost::clock;
use taskhost::metrics::Metrics;
use taskhost::run::open_queues;

use super::{StoreArgs, persistent};

/// Options of `host serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on, e.g. 127.0.0.1:7878 [default: [api] listen].
    #[arg(long)]
    listen: Option<String>,
}

/// Serves the API until SIGINT/SIGTERM.
pub async fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = a.store.load()?;
    if a.listen.is_some() {
        cfg.api.listen = a.listen.clone();
        cfg.api.validate().map_err(anyhow::Error::msg)?;
    }
    persistent(&cfg, "serve")?;
    let Some(listen) = cfg.api.listen.clone() else {
        bail!("nothing to serve on: pass --listen ADDR or set [api] listen in the config file");
    };
    let queues = open_queues(&cfg, clock::system())?;
    let metrics = Metrics::new(queues.clone());
    let server = match ApiServer::start(&cfg.api, &listen, queues.clone(), metrics).await {
        Ok(s) => s,
        Err(e) => {
            queues.close().await;
            return Err(e);
        }
    };
    // No plugins to load: ready as soon as the backend answers.
    server.set_ready();
    super::run::shutdown_signal().await;
    tracing::info!("shutting down the api listener");
    server.shutdown().await;
    queues.close().await;
    Ok(())
}

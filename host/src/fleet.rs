//! A running host's place in the fleet: it registers with its backend's
//! [`HostRegistry`], renews the registration every [`HEARTBEAT_EVERY`]
//! (rewriting its run file too), reclaims the leases of hosts that are
//! provably gone at start and on every beat, and reloads its plugins when
//! `host reload` asks through the backend.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plugin::swap::HotSwap;
use crate::queue::HostRegistry;
use crate::registry::RunFile;

/// How often a host renews its registration and looks for gone holders;
/// well inside the Redis heartbeat's time to live.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

/// The live hosts of a backend: what `host hosts` and `GET /v1/hosts` show.
pub async fn hosts(
    registry: &dyn HostRegistry,
) -> Result<Vec<crate::queue::HostInfo>, crate::queue::QueueError> {
    registry.hosts().await
}

/// Registers this host and reclaims the leases of gone hosts once, before
/// any pool leases: a restart picks up what the process it replaces held.
/// Failures are logged: the host serves anyway, and leases of gone hosts
/// still come back when their `lease_ttl` runs out.
pub async fn join(registry: &dyn HostRegistry, run_file: &RunFile, slots: &[Arc<dyn HotSwap>]) {
    let me = run_file.info(slots);
    if let Err(e) = registry.heartbeat(&me).await {
        tracing::warn!(error = %e, "cannot register this host with the queue backend; retrying");
    }
    if let Err(e) = registry.reclaim_gone().await {
        tracing::warn!(error = %e, "cannot reclaim the leases of gone hosts");
    }
}

/// Rewrites the run file and renews the registration now (after the
/// pools started, so both show their workers at once).
pub async fn beat(
    registry: &dyn HostRegistry,
    run_file: &Arc<RunFile>,
    slots: &[Arc<dyn HotSwap>],
) {
    let me = run_file.info(slots);
    let (file, info) = (run_file.clone(), me.clone());
    let _ = tokio::task::spawn_blocking(move || file.write_info(&info)).await;
    if let Err(e) = registry.heartbeat(&me).await {
        tracing::warn!(error = %e, "cannot renew this host's registration");
    }
}

/// Renews the registration (and the run file) and reclaims gone hosts'
/// leases every [`HEARTBEAT_EVERY`] until `stop`.
pub async fn keep_alive(
    registry: Arc<dyn HostRegistry>,
    run_file: Arc<RunFile>,
    slots: Vec<Arc<dyn HotSwap>>,
    stop: CancellationToken,
) {
    let mut tick = crate::backoff::Ticker::new(HEARTBEAT_EVERY);
    // The first tick comes at once: the first beat is one period away.
    tick.next(&stop).await;
    while tick.next(&stop).await {
        beat(&*registry, &run_file, &slots).await;
        if let Err(e) = registry.reclaim_gone().await {
            tracing::warn!(error = %e, "cannot reclaim the leases of gone hosts");
        }
    }
}

/// Reloads every plugin whenever the backend brings a reload request
/// (`host reload` over Redis), until `stop`.
pub async fn reload_on_request(
    registry: Arc<dyn HostRegistry>,
    slots: Vec<Arc<dyn HotSwap>>,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel(1);
    let listen = registry.listen_for_reloads(tx, stop.clone());
    let reload = async {
        while rx.recv().await.is_some() {
            tracing::info!("reload requested through the queue backend: reloading plugins");
            for slot in &slots {
                slot.reload_logged().await;
            }
        }
    };
    tokio::select! {
        _ = listen => {}
        _ = reload => {}
        _ = stop.cancelled() => {}
    }
}

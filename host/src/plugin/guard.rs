//! One guard around every call into a component: the plugin's time limit
//! holds on the wall clock, host calls included, and a panic in host code
//! serving the call fails that call only.
//!
//! Epoch interruption stops guest code, but a guest waiting in a host call
//! (a sleep, an HTTP body, an enqueue) is not running guest code; the timer
//! here drops the call, and with it the store, wherever it waits.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use crate::pool::panic_message;

/// Why the guard stopped a call.
#[derive(Debug)]
pub(super) enum Stopped {
    /// The call ran past its time limit.
    TimeLimit(String),
    /// Host code serving the call panicked.
    Panicked(String),
}

impl From<Stopped> for String {
    fn from(s: Stopped) -> String {
        match s {
            Stopped::TimeLimit(m) | Stopped::Panicked(m) => m,
        }
    }
}

/// Runs `call` for plugin `name` at `version` within `limit`.
pub(super) async fn guarded<T, E: From<Stopped>>(
    name: &str,
    version: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(panic)) => {
            let msg = panic_message(panic.as_ref());
            tracing::error!(plugin = name, version, panic = %msg, "host code panicked while serving a plugin call; the call fails");
            Err(Stopped::Panicked(format!(
                "host code panicked while serving plugin {name} version {version}: {msg}"
            ))
            .into())
        }
        Err(_) => Err(Stopped::TimeLimit(format!(
            "plugin {name} version {version} ran past its time limit of {} (limits.time); \
             the call was stopped, wherever it waited",
            humantime::format_duration(limit)
        ))
        .into()),
    }
}

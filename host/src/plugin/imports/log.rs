//! `log`: a plugin's lines in the host's log, tagged with plugin and queue,
//! within a per-call byte budget.

use crate::plugin::bindings::handler::taskhost::plugin::host::Level;
use crate::plugin::store::CallState;

/// Longest log line kept from a plugin; the rest is cut so a chatty plugin
/// cannot flood the host's log.
const MAX_LOG_LINE: usize = 8 * 1024;

/// Writes one line, or drops it once the call's budget is used up.
pub(super) fn log(state: &mut CallState, level: Level, message: String) {
    let plugin = state.ctx.spec.name.as_str();
    let queue = &*state.queue;
    if state.log_left == 0 {
        return;
    }
    if message.len() >= state.log_left {
        state.log_left = 0;
        tracing::warn!(
            plugin,
            queue,
            "plugin used up its log budget for this call; dropping further lines"
        );
        return;
    }
    state.log_left -= message.len();
    let mut msg = message;
    if msg.len() > MAX_LOG_LINE {
        let mut cut = MAX_LOG_LINE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...[cut]");
    }
    match level {
        Level::Trace => tracing::trace!(plugin, queue, "{msg}"),
        Level::Debug => tracing::debug!(plugin, queue, "{msg}"),
        Level::Info => tracing::info!(plugin, queue, "{msg}"),
        Level::Warn => tracing::warn!(plugin, queue, "{msg}"),
        Level::Error => tracing::error!(plugin, queue, "{msg}"),
    }
}

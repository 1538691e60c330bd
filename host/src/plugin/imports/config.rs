//! `get-config` and `get-config-all`: the plugin's own configuration.

use crate::plugin::store::CallState;

/// One value of the calling plugin's configuration.
pub(super) fn get(state: &CallState, key: &str) -> Option<String> {
    state.ctx.config.get(key).cloned()
}

/// All of the calling plugin's configuration, sorted by key.
pub(super) fn all(state: &CallState) -> Vec<(String, String)> {
    state
        .ctx
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

//! Why a plugin could not be loaded.

use std::path::PathBuf;

use super::handler::HANDLER_WORLD;

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a WebAssembly component.
    #[error("plugin {path} is not a WebAssembly component: {reason}")]
    NotComponent {
        /// The plugin file.
        path: PathBuf,
        /// What the file is instead.
        reason: String,
    },
    /// The component failed to compile.
    #[error("plugin {path} failed to compile: {reason}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
    /// The component does not fit the handler world.
    #[error("plugin {path} does not implement world {HANDLER_WORLD}: {reason}")]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// What is missing or mismatched.
        reason: String,
    },
    /// The granted directory cannot be used.
    #[error("plugin {name}: granted directory {path}: {reason}")]
    Grant {
        /// Plugin name.
        name: String,
        /// The host directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The plugin's limits do not fit the runtime.
    #[error("plugin {name}: limits: {reason}")]
    Limits {
        /// Plugin name.
        name: String,
        /// What is out of range.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The outbound HTTP client could not be set up.
    #[error("outbound HTTP: {0}")]
    Http(crate::http::TlsError),
}

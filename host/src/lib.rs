//! taskhost: moves tasks from queues through WebAssembly component handlers.
//!
//! The host owns queueing ([`queue`]), the worker pool ([`pool`]), retries
//! ([`backoff`]) and the plugin runtime ([`plugin`]); handlers are components
//! built against the WIT package in `wit/`.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod http;
pub mod plugin;
pub mod pool;
pub mod queue;
pub mod registry;
pub mod run;
pub mod source;

//! Plugin runtime: WASM components of every world the host runs.
//!
//! One [`Runtime`] (one wasmtime `Engine`, one linker) per process serves
//! handler and source plugins alike. A plugin file is checked and compiled
//! once at load; every call (a batch, a poll) then gets a fresh `Store` and
//! instance from the plugin's pre-linked `InstancePre`, so guest state and
//! memory never leak from one call into the next, and a trap costs only that
//! call. Guests get WASI p2 with no ambient authority: no environment, no
//! sockets, no files beyond the one directory a plugin is granted, and
//! outbound HTTP only to the hosts it is allowed.
//!
//! Layout:
//! - `engine`: the engine, pooling allocator, linker and epoch ticker;
//! - `load`: read, check, compile (or `cache`), link: a [`Plugin`] of any world;
//! - `store`: what a plugin is granted and the per-call store with its limits;
//! - `limiter`: the memory limit over all of an instance's memories, and counts;
//! - `handler`, `source`: one file per world, the calls into the guest;
//! - `imports`: the host side of the WIT interfaces guests import;
//! - `guard`: the wall-clock time limit and panic fence around every call;
//! - `swap`: slots whose plugin is replaced while it serves;
//! - `history`: what a slot remembers: versions loaded, swapped, refused; calls per version;
//! - `spec`, `error`: what a plugin is loaded from, and why loading failed.
//!
//! `plugin` depends on `pool` (it is a batch handler) and on `source` (it is
//! a polled source); neither depends on `plugin`.

mod bindings;
pub mod cache;
pub mod componentize;
mod engine;
mod error;
mod guard;
mod handler;
pub mod history;
mod imports;
mod limiter;
mod load;
mod source;
mod spec;
mod store;
pub mod swap;

pub use engine::Runtime;
pub use error::PluginError;
pub use handler::{CallFailed, HANDLER_WORLD, HandlerWorld};
pub use load::{LoadInfo, Plugin};
pub use source::{SOURCE_WORLD, SourcePlugin, SourceWorld};
pub use spec::{DirGrant, Limits, PluginSpec, RuntimeOptions};

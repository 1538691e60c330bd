//! Bindings generated from `wit/`, one `bindgen!` per world the host runs.
//!
//! The handler bindings own the shared interfaces (`types`, `host`, `bulk`);
//! the source bindings reuse them, so one linker and one set of host
//! imports serve every world.

/// The `bulk-handler-plugin` world: a superset of `handler-plugin`, so
/// linking its imports serves components of either world.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "bulk-handler-plugin",
        imports: { default: async },
        exports: { default: async },
        // Borrowed parameter types: a batch is lowered straight from the
        // host's tasks, without copying every payload first.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The `source-plugin` world; its shared types and host imports are the
/// handler world's.
pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source-plugin",
        imports: { default: async },
        exports: { default: async },
        with: {
            "taskhost:plugin/types": super::handler::taskhost::plugin::types,
            "taskhost:plugin/host": super::handler::taskhost::plugin::host,
        },
    });
}

pub use handler::taskhost::plugin::types as wit;

//! taskhost's integration tests, in one binary (one link of wasmtime):
//! the real `host` binary and real components, with private Redis and HTTP
//! servers from `taskhost-fixtures`. Shared helpers are in `support/`.

mod api;
mod cli;
mod containment;
mod dashboard;
mod docs;
mod e2e;
mod fleet;
mod hotswap;
mod http;
mod languages;
mod metrics;
mod multihost;
mod ops;
mod plugins;
mod postgres;
mod postgres_docs;
mod push;
mod redis;
mod redis_access;
mod redis_cluster;
mod store;
mod support;

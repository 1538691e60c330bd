//! taskhost
pub mod backoff;
pub mod clock;
pub mod queue;

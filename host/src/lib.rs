//! taskhost
pub mod backoff;
pub mod clock;
pub mod pool;
pub mod queue;

//! Per-shard async primitives (single-threaded, no locks) and the clock.

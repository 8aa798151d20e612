//! PostgreSQL: our own pipelined wire client, pool, group commit, embedded cluster.

pub mod cluster;
#[doc(hidden)]
pub mod testing;

//! PostgreSQL: our own pipelined wire client, pool, group commit, embedded cluster.

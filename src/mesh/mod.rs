//! The shard mesh: bounded channels between every ordered pair of shards.

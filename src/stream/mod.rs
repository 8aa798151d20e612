//! hearth's replication stream: per-shard stream positions, sync tokens,
//! and (in later modules) the announcements shards send each other after
//! persisting, and the per-shard notifier that wakes parked `/sync`s.

pub mod token;

pub use token::{ShardPos, StreamToken, TokenError};

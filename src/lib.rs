//! hearth: a thread-per-core Matrix homeserver.
//!
//! See `docs/ARCHITECTURE.md` for how a request flows through shards,
//! the mesh, caches and the database.

pub mod admission;
pub mod api;
pub mod auth;
pub mod blocking;
pub mod config;
pub mod db;
pub mod ephemeral;
pub mod error;
pub mod events;
pub mod federation;
pub mod filter;
pub mod http;
pub mod keys;
pub mod media;
pub mod mesh;
pub mod metrics;
pub mod observability;
pub mod primitives;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod server;
pub mod shard;
pub mod shard_state;
pub mod stream;
pub mod sync;

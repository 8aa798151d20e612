//! The shard mesh: bounded channels between every ordered pair of shards,
//! carrying closures to run on the target shard (Seastar's `submit_to`).
//! See `docs/mesh.md` for the design and its invariants.

mod endpoint;
mod hash;
mod ring;

pub use endpoint::{BroadcastScope, Mesh, MeshEndpoint, MeshStats};
pub use hash::{fnv1a64, jump_consistent_hash, shard_for_room, shard_for_user};
pub use ring::Job;

/// Why a cross-shard call did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The target (or this) endpoint has closed; the job did not run, or its
    /// result could not be delivered.
    #[error("shard {shard} is closed")]
    Closed { shard: usize },
    #[error("no shard {shard}: the mesh has {n_shards}")]
    NoSuchShard { shard: usize, n_shards: usize },
}

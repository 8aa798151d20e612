//! Ephemeral and per-user data (issue #5 point 5): typing, receipts, read
//! markers, account data (tags included), presence and send-to-device.
//!
//! Where things live (sharding):
//! - room-scoped data (typing, receipts) is written on the **room's owner
//!   shard** (`shard_for_room`), numbered by that shard's stream writer;
//! - user-scoped data (account data, the recipient's to-device inbox,
//!   presence) on the **user's shard** (`shard_for_user`).
//!
//! Durable data (receipts, account data, to-device) is committed before the
//! client is answered and announced with a persisted position; typing and
//! presence live in memory and are announced with an ephemeral position.
//! Every shard's notifier feeds a [`EphemeralCache`] with what `/sync` reads from
//! memory (typing sets, presence, "last changed" positions); the rest is read
//! from PostgreSQL by the functions in [`sync`].

pub mod account_data;
pub mod cache;
pub mod presence;
pub mod receipts;
pub mod service;
pub mod sync;
pub mod to_device;
pub mod typing;

use std::future::Future;
use std::rc::Rc;

use crate::db::DbError;
use crate::mesh::{MeshEndpoint, MeshError};
use crate::rooms::RoomError;
use crate::shard_state::{Here, OnShardError, ShardState};

pub use cache::EphemeralCache;

/// Errors of the ephemeral/per-user endpoints, mapped to Matrix errors at
/// the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum EphError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    BadJson(String),
    /// 405: account data the server manages (spec "Client Config", Server
    /// Behaviour), answered with `M_BAD_JSON` as the spec's example and
    /// Synapse do.
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("{0}")]
    Internal(String),
}

impl crate::error::Retryable for EphError {
    fn retryable(&self) -> bool {
        match self {
            EphError::Room(e) => e.retryable(),
            EphError::Db(e) => e.retryable(),
            EphError::Mesh(e) => e.retryable(),
            _ => false,
        }
    }
}

/// Runs `f` on shard `target` with that shard's state (a local task when
/// `target` is this shard).
pub async fn on_shard<F, Fut, T>(mesh: &MeshEndpoint, target: usize, f: F) -> Result<T, EphError>
where
    F: FnOnce(Rc<ShardState>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, EphError>> + 'static,
    T: Send + 'static,
{
    // Already there (e.g. `/sync`'s presence on the user's own shard):
    // run inline, no task, no mesh hop.
    crate::shard_state::on_shard(mesh, target, Here::Inline, f)
        .await
        .map_err(|e| match e {
            OnShardError::Mesh(e) => EphError::from(e),
            OnShardError::NoState => EphError::Internal(e.to_string()),
        })?
}

/// The shard id as the `stream_shard` column wants it.
pub(crate) fn shard_i32(shard: usize) -> Result<i32, EphError> {
    i32::try_from(shard).map_err(|_| EphError::Internal("shard id out of range".into()))
}

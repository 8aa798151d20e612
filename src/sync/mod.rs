//! `/sync` (client-server API "Syncing"): initial and incremental syncs
//! served on the user's shard, mostly from shard-local memory.
//!
//! - [`filter_store`] keeps users' stored filters in PostgreSQL (the filter
//!   language itself is `crate::filter`, shared with `/messages`).
//! - [`handler`]: the request flow — the cheap path (nothing changed for the
//!   user since the token: answered from the notifier, no database, no
//!   cross-shard call), long polling on the notifier, then computing.
//! - [`timeline`]: a room's timeline slice and the state around it.
//! - [`cache`]: per-shard caches fed by the stream announcements (recent
//!   timeline windows, state snapshots by id).
//! - [`serve`]: events as `rooms::serve` serves them (redactions,
//!   `prev_content`), cached viewer-independent, `age`/`transaction_id`
//!   added per request; history visibility of a timeline.
//! - [`remote`]: invites kept for rooms hosted elsewhere (`rooms.invite`,
//!   and `rooms.leave` once rejected).
//! - [`response`]: the response shape, with every field clients require.
//! - [`extensions`]: the seam for ephemeral and per-user streams (typing,
//!   receipts, account data, presence, to-device), filled by their module.
//! - [`key_counts`]: a device's one-time and fallback key counts, kept
//!   between its syncs until a poke says they changed.

pub mod cache;
pub mod extensions;
pub mod filter_store;
pub mod handler;
pub mod key_counts;
pub mod remote;
pub mod response;
pub mod serve;
pub mod timeline;

use std::rc::Rc;

use ruma::OwnedUserId;

use crate::db::{DbError, Pool};
use crate::stream::StreamToken;

pub use crate::filter::Filter;

/// What every part of one sync computation shares: who syncs, between
/// which tokens, with which filter.
#[derive(Clone)]
pub struct SyncContext {
    pub user: OwnedUserId,
    pub device_id: String,
    /// The client's token (already clamped to `current`), `None` for an
    /// initial sync.
    pub since: Option<StreamToken>,
    /// The token this response will return as `next_batch`: everything the
    /// response covers is at or before it.
    pub current: StreamToken,
    pub full_state: bool,
    pub filter: Rc<Filter>,
    /// The shard's database pool (the sync runs on the user's shard).
    pub db: Pool,
}

impl SyncContext {
    /// Whether this is an initial sync (no `since`).
    pub fn is_initial(&self) -> bool {
        self.since.is_none()
    }
}

/// Errors while computing a sync (the HTTP edge maps them to errcodes).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The `filter` parameter or a stored filter is unusable.
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    /// `filter=` names no filter of the user (400 `M_INVALID_PARAM`).
    #[error("{0}")]
    UnknownFilter(String),
    #[error(transparent)]
    Room(#[from] crate::rooms::RoomError),
    #[error(transparent)]
    Ephemeral(#[from] crate::ephemeral::EphError),
    #[error("{0}")]
    Internal(String),
    /// Too many initial syncs on the shard already (`admission`).
    #[error(transparent)]
    Overloaded(#[from] crate::admission::Overloaded),
}

impl crate::error::Retryable for SyncError {
    fn retryable(&self) -> bool {
        match self {
            SyncError::Db(e) => e.retryable(),
            SyncError::Room(e) => e.retryable(),
            SyncError::Ephemeral(e) => e.retryable(),
            SyncError::Overloaded(_) => true,
            SyncError::Filter(_) | SyncError::UnknownFilter(_) | SyncError::Internal(_) => false,
        }
    }
}

//! Rooms: persisting and serving room events on the room's owner shard.
//!
//! Every write to a room runs on `shard_for_room(room_id, n)`, serialised
//! per room by that shard's `Linearizer`; the event is built and signed
//! (`events::build_pdu`), checked against the room version's authorization
//! rules (ruma state-res), and committed through the shard's `GroupCommit`
//! (event row, state snapshot delta, current state, forward extremities,
//! txn id) before its id is returned; the room's lock covers building
//! only, and a room's queued events commit together (`pipeline`). Each shard keeps its own caches of
//! room heads (current state + extremities) and events, touched only by
//! that shard. State storage: see [`state`] and docs/ARCHITECTURE.md.

pub mod admin;
pub mod alias;
pub mod backfill;
pub mod client;
pub mod commit;
pub mod create;
pub mod destinations;
pub mod directory;
pub mod event_cache;
pub mod federation_read;
pub mod forget;
pub mod graph;
pub mod history;
pub mod join_state;
pub mod member_profile;
pub mod partial;
pub mod pipeline;
pub mod purge;
pub mod receive;
pub mod redaction;
pub mod remote_join;
pub mod remote_keys;
pub mod reports;
pub mod resolve;
pub mod serve;
pub mod service;
pub mod state;
pub mod template;
pub mod timeline;
pub mod txn;
pub mod visibility;

use crate::db::DbError;
use crate::mesh::MeshError;

/// Rooms' code and callers name it here; it lives in `events` because it
/// parses untrusted PDUs from other servers too.
pub use crate::events::Pdu;
pub use forget::{forgotten_rooms, is_forgotten};
pub use serve::{client_events, Viewer};
pub use service::{install, local, EventRequest, Rooms};
pub use timeline::{PageToken, RoomToken};

/// Errors of room operations, mapped to Matrix errors at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("event too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    BadJson(String),
    #[error(transparent)]
    UnsupportedVersion(#[from] crate::events::UnsupportedRoomVersion),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("{0}")]
    Internal(String),
    /// 400 `M_INVALID_PARAM` (e.g. an alias with bad syntax).
    #[error("{0}")]
    InvalidParam(String),
    /// 400 `M_UNKNOWN`: invalid in a way the spec gives no code for.
    #[error("{0}")]
    BadRequest(String),
    /// 400 `M_ROOM_IN_USE`: `createRoom`'s alias is taken.
    #[error("{0}")]
    RoomInUse(String),
    /// 409 `M_UNKNOWN`: `PUT /directory/room/{alias}` on a taken alias.
    #[error("{0}")]
    AliasTaken(String),
    /// 400 `M_BAD_ALIAS`: a canonical alias not pointing to the room.
    #[error("{0}")]
    BadAlias(String),
}

/// An event hearth stored or built that does not parse is hearth's bug, not
/// the client's: internal. A PDU received from another server maps its
/// parse error to `BadJson` at the call site instead (`receive.rs`).
impl From<crate::events::PduParseError> for RoomError {
    fn from(e: crate::events::PduParseError) -> Self {
        RoomError::Internal(format!("stored event malformed: {e}"))
    }
}

impl crate::error::Retryable for RoomError {
    fn retryable(&self) -> bool {
        match self {
            RoomError::Db(e) => e.retryable(),
            RoomError::Mesh(e) => e.retryable(),
            _ => false,
        }
    }
}

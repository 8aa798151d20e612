//! Rooms: persisting and serving room events on the room's owner shard.
//!
//! Every write to a room runs on `shard_for_room(room_id, n)`, serialised
//! per room by that shard's `Linearizer`; the event is built and signed
//! (`events::build_pdu`), checked against the room version's authorization
//! rules (ruma state-res), and committed through the shard's `GroupCommit`
//! (event row, state snapshot delta, current state, forward extremities,
//! txn id) before its id is returned. Each shard keeps its own caches of
//! room heads (current state + extremities) and events, touched only by
//! that shard. State storage: see [`state`] and docs/ARCHITECTURE.md.

pub mod alias;
pub mod client;
pub mod commit;
pub mod create;
pub mod directory;
pub mod event_filter;
pub mod forget;
pub mod graph;
pub mod history;
pub mod member_profile;
pub mod pdu;
pub mod receive;
pub mod redaction;
pub mod remote_keys;
pub mod resolve;
pub mod serve;
pub mod service;
pub mod state;
pub mod timeline;
pub mod txn;
pub mod visibility;

use crate::db::DbError;
use crate::http::MatrixError;
use crate::mesh::MeshError;

pub use forget::{forgotten_rooms, is_forgotten};
pub use pdu::Pdu;
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

impl From<RoomError> for MatrixError {
    fn from(e: RoomError) -> MatrixError {
        match e {
            RoomError::NotFound(m) => MatrixError::not_found(m),
            RoomError::Forbidden(m) => MatrixError::forbidden(m),
            RoomError::TooLarge(m) => MatrixError::too_large(m),
            RoomError::BadJson(m) => MatrixError::bad_json(m),
            RoomError::UnsupportedVersion(v) => {
                MatrixError::unsupported_room_version(v.to_string())
            }
            RoomError::Db(e) => MatrixError::from(e),
            RoomError::Mesh(e) => MatrixError::unknown(e.to_string()),
            RoomError::Internal(m) => MatrixError::unknown(m),
            RoomError::InvalidParam(m) => MatrixError::invalid_param(m),
            RoomError::BadRequest(m) => MatrixError::bad_request(m),
            RoomError::RoomInUse(m) => MatrixError::room_in_use(m),
            RoomError::AliasTaken(m) => MatrixError::new(409, "M_UNKNOWN", m),
            RoomError::BadAlias(m) => MatrixError::new(400, "M_BAD_ALIAS", m),
        }
    }
}

//! What shards announce to each other after writing: the replication
//! stream's messages. A `Change` carries its stream position and who it
//! concerns, so every shard's notifier can update its caches and wake the
//! parked `/sync`s of the affected local users without asking anyone.
//!
//! Helpers adding a stream (typing, receipts, to-device…) add a variant to
//! [`RoomChange`] or [`UserChange`]; the notifier's generic handling (wake
//! the room's local members, or the one user) applies to every variant.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

/// Where a change sits in its writer shard's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    /// Durable in PostgreSQL (events, receipts, account data, to-device).
    Persisted(i64),
    /// In memory only (typing, presence).
    Ephemeral(i64),
}

/// One announced change, from the shard that wrote it.
#[derive(Debug, Clone)]
pub enum Change {
    /// Something in a room: wakes the room's local joined and invited
    /// members (and, for a membership change, its target).
    Room {
        room_id: OwnedRoomId,
        pos: Pos,
        what: RoomChange,
    },
    /// Something for one user only.
    User {
        user_id: OwnedUserId,
        pos: Pos,
        what: UserChange,
    },
}

impl Change {
    pub fn pos(&self) -> Pos {
        match self {
            Change::Room { pos, .. } | Change::User { pos, .. } => *pos,
        }
    }
}

/// What changed in a room.
#[derive(Debug, Clone)]
pub enum RoomChange {
    /// A new event, persisted on the room's owner shard.
    Event(Arc<EventChange>),
}

/// A persisted room event as the other shards need it.
#[derive(Debug, Clone)]
pub struct EventChange {
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub event_type: String,
    pub state_key: Option<String>,
    /// `content.membership` of an `m.room.member` event: the new membership
    /// of the user named by `state_key`.
    pub membership: Option<String>,
    /// The event in client format, without `unsigned` extras that depend
    /// on the reader (for per-shard timeline caches).
    pub event: Arc<Value>,
}

/// What changed for one user.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// A generic "wake up and look" for streams without a cache of their own.
    Poke,
}

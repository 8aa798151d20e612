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
    /// The room's typing set changed (ephemeral, from the room's owner
    /// shard): the whole new set, which every shard caches for `/sync`.
    Typing(Arc<Vec<OwnedUserId>>),
    /// A public receipt was stored (persisted, on the room's owner shard);
    /// `/sync` reads it from the `receipts` table.
    Receipt,
    /// A partial-state room got its full state (persisted, on the room's
    /// owner shard; `partial_state_resynced`): a non-lazy-loading `/sync`
    /// omitted the room until now and sends it as newly joined.
    FullState,
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
    /// The room's current state changed by more than this event's own key
    /// (a state resolution): `/sync` cannot derive the new state from the
    /// timeline alone.
    pub resolved: bool,
}

/// What changed for one user.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// A generic "wake up and look" for streams without a cache of their own.
    Poke,
    /// Global (`room_id: None`) or room account data changed (persisted on
    /// the user's shard), tags and `m.fully_read` included.
    AccountData { room_id: Option<OwnedRoomId> },
    /// A to-device message was stored for one of the user's devices
    /// (persisted on the user's shard).
    ToDevice,
    /// The user's own `m.read.private` receipt in a room (persisted on the
    /// room's owner shard): only its user may see it, so only they wake.
    PrivateReceipt { room_id: OwnedRoomId },
    /// The user's presence changed (ephemeral, on the user's shard). Also
    /// wakes the local members of `rooms` (those who may see it).
    Presence(Arc<PresenceUpdate>),
}

/// A user's presence as announced (client-server API "Presence").
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceUpdate {
    /// `online`, `unavailable` or `offline`.
    pub presence: String,
    pub status_msg: Option<String>,
    /// Wall-clock ms of the last pro-active event (for `last_active_ago`).
    pub last_active_ts: u64,
    pub currently_active: bool,
    /// The rooms the user was joined to when this was announced: who
    /// shares a room with them may see it.
    pub rooms: Vec<OwnedRoomId>,
}

//! This shard's ephemeral state as a writer: the typing sets of the rooms
//! it owns, the presence of the users it owns, and which of its users'
//! devices hold to-device messages delivered but not yet acknowledged.
//! Created on first use (a thread-local: mesh jobs reach it too).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId};

use crate::primitives::RealClock;
use crate::shard_state::ShardState;
use crate::stream::{Change, Pos, RoomChange, ShardPos};

use super::presence::LocalPresence;
use super::typing::Typing;

/// Per device: the to-device mark a sync gave it and whether more wait.
pub type DeviceMarks = HashMap<String, (ShardPos, bool)>;

/// See the module doc.
pub struct EphService {
    pub typing: Rc<Typing>,
    /// Presence of this shard's users (those who ever set one).
    pub presence: RefCell<HashMap<OwnedUserId, LocalPresence>>,
    /// `(user, device)` pairs whose last computed sync delivered to-device
    /// messages, with the mark it gave them (a sync at or past the mark
    /// acknowledges them, even one answered by the cheap path) and whether
    /// more were left waiting (the next sync must fetch them).
    /// Keyed by user first so a sync can tell "nothing outstanding" with
    /// one lookup and no allocation.
    pub to_device_outstanding: RefCell<HashMap<OwnedUserId, DeviceMarks>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<EphService>>> = const { RefCell::new(None) };
}

/// This shard's service, created (with its typing expiry task) on first use.
pub fn get(state: &ShardState) -> Rc<EphService> {
    if let Some(s) = LOCAL.with(|l| l.borrow().clone()) {
        return s;
    }
    let stream = state.stream.clone();
    let typing = Typing::new(
        RealClock::handle(),
        Box::new(move |room: &OwnedRoomId, users: Vec<OwnedUserId>| {
            let users = Arc::new(users);
            let room = room.clone();
            // Typing is memory-only: an ephemeral position, no commit to wait for.
            stream.publish_ephemeral(move |pos| {
                vec![Change::Room {
                    room_id: room,
                    pos: Pos::Ephemeral(pos),
                    what: RoomChange::Typing(users),
                }]
            });
        }),
    );
    monoio::spawn(typing.clone().run_expiry());
    monoio::spawn(super::presence::run_timers());
    let s = Rc::new(EphService {
        typing,
        presence: RefCell::default(),
        to_device_outstanding: RefCell::default(),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(s.clone()));
    s
}

/// `PUT /rooms/{roomId}/typing/{userId}` (own user checked by the caller):
/// on the room's owner shard, for a joined user; `timeout: None` stops.
pub async fn set_typing(
    mesh: &crate::mesh::MeshEndpoint,
    user: OwnedUserId,
    room: OwnedRoomId,
    timeout: Option<std::time::Duration>,
) -> Result<(), super::EphError> {
    let owner = crate::mesh::shard_for_room(&room, mesh.n_shards());
    super::on_shard(mesh, owner, move |state| async move {
        let rooms = crate::rooms::local()?;
        super::receipts::require_joined(&rooms, &room, &user).await?;
        get(&state).typing.set(&room, &user, timeout);
        if user.server_name() == state.key.server_name {
            // Server-server "Typing Notifications": to the room's servers.
            let servers = rooms.remote_servers(&room).await?;
            crate::federation::sender::queue_edu(
                &servers,
                Some(format!("typing {room} {user}")),
                serde_json::json!({"edu_type": "m.typing", "content": {
                    "room_id": room, "user_id": user, "typing": timeout.is_some()}}),
            );
        }
        Ok(())
    })
    .await
}

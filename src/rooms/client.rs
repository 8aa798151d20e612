//! Room operations as the client API needs them, callable from any shard:
//! each forwards to the room's owner shard over the mesh and runs there
//! against that shard's [`Rooms`](super::Rooms).

use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::db::Pool;
use crate::mesh::{shard_for_room, MeshEndpoint};
use crate::shard_state::{on_shard_with, Here, OnShardError};

use super::create::{self, CreatePlan, CreateRoomRequest};
use super::service::{local, EventRequest, Rooms};
use super::RoomError;
use super::{alias, member_profile};

/// Runs `f` on the room's owner shard with that shard's service.
pub(crate) async fn on_owner<F, Fut, T>(
    mesh: &MeshEndpoint,
    room: &OwnedRoomId,
    f: F,
) -> Result<T, RoomError>
where
    F: FnOnce(std::rc::Rc<Rooms>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, RoomError>> + 'static,
    T: Send + 'static,
{
    let owner = shard_for_room(room, mesh.n_shards());
    on_shard_with(mesh, owner, Here::Spawn, || local().ok(), f)
        .await
        .map_err(|e| match e {
            OnShardError::Mesh(e) => RoomError::Mesh(e),
            OnShardError::NoState => {
                RoomError::Internal("room service not started on this shard".into())
            }
        })?
}

/// `POST /createRoom`. Returns the new room's id once every initial event
/// is committed.
pub async fn create_room(
    mesh: &MeshEndpoint,
    creator: OwnedUserId,
    req: CreateRoomRequest,
) -> Result<OwnedRoomId, RoomError> {
    let here = local()?;
    let mut plan = create::plan(req, &creator, &here.key)?;
    let room_id = plan.room_id.clone();
    member_profile::fill_create_plan(&here.db, &mut plan.events).await?;
    // The alias is reserved before the room exists (spec: M_ROOM_IN_USE
    // and no room when it is taken) and released if creation fails.
    let alias = plan.alias.clone();
    if let Some(a) = &alias {
        if !alias::insert(&here.db, a, &room_id, creator.as_str()).await? {
            return Err(RoomError::RoomInUse(format!(
                "Room alias {a} already taken"
            )));
        }
    }
    let created = async {
        for (ty, key, content) in &plan.events {
            if ty == "m.room.canonical_alias" && key.is_empty() {
                let json = serde_json::to_value(content)
                    .map_err(|e| RoomError::Internal(e.to_string()))?;
                let map = json.as_object().cloned().unwrap_or_default();
                alias::check_canonical(&here.db, &room_id, &map, None).await?;
            }
        }
        let rid = room_id.clone();
        on_owner(mesh, &rid, move |rooms| async move {
            run_create(&rooms, plan, creator).await
        })
        .await
    }
    .await;
    if let (Err(_), Some(a)) = (&created, &alias) {
        if let Err(e) = alias::delete(&here.db, a, &room_id).await {
            tracing::warn!(alias = %a, error = %e, "could not release the alias of a failed createRoom");
        }
    }
    created?;
    Ok(room_id)
}

async fn run_create(
    rooms: &std::rc::Rc<Rooms>,
    plan: CreatePlan,
    creator: OwnedUserId,
) -> Result<(), RoomError> {
    let room_id = plan.room_id.clone();
    rooms
        .persist_create(plan.create, plan.version, plan.is_public)
        .await?;
    for (event_type, state_key, content) in plan.events {
        rooms
            .send(EventRequest {
                room_id: room_id.clone(),
                sender: creator.clone(),
                event_type,
                state_key: Some(state_key),
                content,
                txn: None,
                redacts: None,
            })
            .await?;
    }
    Ok(())
}

/// Sends a message or state event; returns its event id after COMMIT.
pub async fn send_event(mesh: &MeshEndpoint, req: EventRequest) -> Result<OwnedEventId, RoomError> {
    let room = req.room_id.clone();
    on_owner(mesh, &room, move |rooms| async move {
        Ok(rooms.send(req).await?.event_id.clone())
    })
    .await
}

/// Changes `target`'s membership (join, leave, invite, ban…) as `sender`,
/// with an optional human-readable `reason` (spec: `m.room.member` content).
/// Whether `sender` may do it is decided by the room version's auth rules.
pub async fn set_membership(
    mesh: &MeshEndpoint,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<OwnedEventId, RoomError> {
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), membership.to_owned().into());
    if let Some(r) = reason {
        content.insert("reason".into(), r.into());
    }
    member_profile::fill(&local()?.db, target, &mut content).await?;
    send_event(
        mesh,
        EventRequest {
            room_id,
            sender,
            event_type: "m.room.member".into(),
            state_key: Some(target.to_owned()),
            content,
            txn: None,
            redacts: None,
        },
    )
    .await
}

/// Stores a room joined through another server on its owner shard
/// (`Rooms::persist_remote_join`); `partial`: the answer omitted the
/// members, these servers have the rest.
pub async fn persist_remote_join(
    mesh: &MeshEndpoint,
    room: OwnedRoomId,
    version: crate::events::RoomVersion,
    events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    state_ids: Vec<OwnedEventId>,
    join: (OwnedEventId, CanonicalJsonObject),
    partial: Option<Vec<String>>,
) -> Result<OwnedEventId, RoomError> {
    on_owner(mesh, &room.clone(), move |rooms| async move {
        rooms
            .persist_remote_join(&room, version, events, state_ids, join, partial)
            .await
    })
    .await
}

/// The invite of `target` (a user of another server) by `sender`, built
/// and signed on the owner shard but not stored: the caller has it
/// co-signed by the target's server first.
pub async fn build_invite(
    mesh: &MeshEndpoint,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    target: OwnedUserId,
    reason: Option<String>,
) -> Result<(crate::events::RoomVersion, CanonicalJsonObject), RoomError> {
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), "invite".to_owned().into());
    if let Some(r) = reason {
        content.insert("reason".into(), r.into());
    }
    let req = EventRequest {
        room_id: room_id.clone(),
        sender,
        event_type: "m.room.member".into(),
        state_key: Some(target.to_string()),
        content,
        txn: None,
        redacts: None,
    };
    on_owner(mesh, &room_id, move |rooms| async move {
        rooms.build_unsent(req).await
    })
    .await
}

async fn require_joined(rooms: &Rooms, room: &OwnedRoomId, user: &str) -> Result<(), RoomError> {
    match rooms.membership(room, user).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(RoomError::Forbidden(format!(
            "{user} is not in room {room}"
        ))),
    }
}

/// `GET /rooms/{roomId}/state`: current state in client format (joined
/// users only).
pub async fn get_state(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room_id: OwnedRoomId,
) -> Result<Vec<Value>, RoomError> {
    on_owner(mesh, &room_id.clone(), move |rooms| async move {
        require_joined(&rooms, &room_id, user.as_str()).await?;
        let head = rooms.head(&room_id).await?;
        let ids: Vec<String> = head.state.values().cloned().collect();
        // Served like every event: redactions applied, unsigned filled.
        super::serve::client_events_by_id(&rooms.db, &ids, None).await
    })
    .await
}

/// `GET /rooms/{roomId}/state/{type}/{stateKey}`: the content.
pub async fn get_state_event(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room_id: OwnedRoomId,
    event_type: String,
    state_key: String,
) -> Result<Value, RoomError> {
    on_owner(mesh, &room_id.clone(), move |rooms| async move {
        require_joined(&rooms, &room_id, user.as_str()).await?;
        let head = rooms.head(&room_id).await?;
        let id = head
            .state
            .get(&(event_type.clone(), state_key.clone()))
            .ok_or_else(|| {
                RoomError::NotFound(format!("no {event_type} state for '{state_key}'"))
            })?;
        let mut served =
            super::serve::client_events_by_id(&rooms.db, std::slice::from_ref(id), None).await?;
        let ev = served
            .pop()
            .ok_or_else(|| RoomError::NotFound("event not found".into()))?;
        Ok(ev["content"].clone())
    })
    .await
}

/// `GET /joined_rooms`: readable on any shard from `current_state`.
pub async fn joined_rooms(db: &Pool, user: &str) -> Result<Vec<String>, RoomError> {
    let rows = db
        .query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member' \
             AND state_key = $1 AND membership = 'join' ORDER BY room_id",
            &[&user],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(RoomError::from))
        .collect()
}

/// `GET /rooms/{roomId}/members`: the current `m.room.member` events,
/// filtered by `membership` (only these) and `not_membership` (all but
/// these), as the spec's query parameters say. Joined users only.
pub async fn members(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room_id: OwnedRoomId,
    membership: Option<String>,
    not_membership: Option<String>,
) -> Result<Vec<Value>, RoomError> {
    on_owner(mesh, &room_id.clone(), move |rooms| async move {
        require_joined(&rooms, &room_id, user.as_str()).await?;
        let head = rooms.head(&room_id).await?;
        let ids: Vec<String> = head
            .state
            .iter()
            .filter(|((ty, _), _)| ty == "m.room.member")
            .map(|(_, id)| id.clone())
            .collect();
        let served = super::serve::client_events_by_id(&rooms.db, &ids, None).await?;
        let mut out = Vec::new();
        for ev in served {
            let m = ev["content"]["membership"].as_str().unwrap_or_default();
            if membership.as_deref().is_some_and(|want| want != m)
                || not_membership.as_deref().is_some_and(|not| not == m)
            {
                continue;
            }
            out.push(ev);
        }
        Ok(out)
    })
    .await
}

/// `GET /rooms/{roomId}/joined_members`: `{user_id: {display_name,
/// avatar_url}}` from the joined members' member events.
pub async fn joined_members(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room_id: OwnedRoomId,
) -> Result<serde_json::Map<String, Value>, RoomError> {
    let joined = members(mesh, user, room_id, Some("join".into()), None).await?;
    Ok(joined
        .into_iter()
        .filter_map(|ev| {
            let uid = ev["state_key"].as_str()?.to_owned();
            let c = &ev["content"];
            // Both keys are optional in the spec: omit rather than send null.
            let mut m = serde_json::Map::new();
            if let Some(v) = c.get("displayname").filter(|v| v.is_string()) {
                m.insert("display_name".into(), v.clone());
            }
            if let Some(v) = c.get("avatar_url").filter(|v| v.is_string()) {
                m.insert("avatar_url".into(), v.clone());
            }
            Some((uid, Value::Object(m)))
        })
        .collect())
}

/// Applies a PDU received from another server on the room's owner shard:
/// the one entry point federation calls (`rooms::receive`).
pub async fn apply_pdu(
    mesh: &MeshEndpoint,
    received: super::receive::Received,
) -> Result<super::receive::Applied, RoomError> {
    let room = received.room_id.clone();
    on_owner(mesh, &room, move |rooms| async move {
        rooms.apply_pdu(received).await
    })
    .await
}

/// `make_join` / `make_leave` / `make_knock`: the unsigned membership
/// template for `user`, built on the room's owner shard
/// (`Rooms::membership_template`).
pub async fn membership_template(
    mesh: &MeshEndpoint,
    room: OwnedRoomId,
    user: OwnedUserId,
    membership: &'static str,
) -> Result<(crate::events::RoomVersion, Value), RoomError> {
    on_owner(mesh, &room.clone(), move |rooms| async move {
        rooms.membership_template(&room, &user, membership).await
    })
    .await
}

/// Makes a server's public key known to every shard's key store
/// (`rooms::remote_keys`): federation after fetching it, tests directly.
pub async fn add_remote_key(
    mesh: &MeshEndpoint,
    server: String,
    key_id: String,
    public_key: String,
) -> Result<(), RoomError> {
    for shard in 0..mesh.n_shards() {
        let (server, key_id, public_key) = (server.clone(), key_id.clone(), public_key.clone());
        on_shard_with(
            mesh,
            shard,
            Here::Inline,
            || local().ok(),
            move |rooms| async move {
                rooms
                    .remote_keys
                    .insert(&server, &key_id, &public_key)
                    .map_err(|e| RoomError::BadJson(e.to_string()))
            },
        )
        .await
        .map_err(|e| match e {
            OnShardError::Mesh(e) => RoomError::Mesh(e),
            OnShardError::NoState => RoomError::Internal("room service not started".into()),
        })??;
    }
    Ok(())
}

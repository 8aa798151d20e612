//! Room endpoints (client-server API "Rooms", "Sending events to a room",
//! "Getting events for a room", "Joining rooms"): thin handlers over
//! `rooms::client`, which runs each operation on the room's owner shard.

use std::rc::Rc;

use ruma::{OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::admission::Work;
use crate::auth::{self, Requester};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::ratelimit::Action;
use crate::rooms::create::{to_canonical_json, CreateRoomRequest};
use crate::rooms::EventRequest;
use crate::rooms::{alias, client};
use crate::shard_state::ShardState;

use crate::api::util::{json_body, json_bytes, optional_json_body};

/// Spec "Size limits": 64 KiB per event; a bigger body can never fit.
const MAX_EVENT_BODY: usize = 65_536;

async fn user(state: &ShardState, req: &Request) -> Result<Requester, MatrixError> {
    Ok(auth::require_user(state, req).await?)
}

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn content_body(req: &Request) -> Result<ruma::CanonicalJsonObject, MatrixError> {
    event_content(&req.body)
}

/// The content of a client's event (`PUT /send`, `PUT /state`) from the
/// request body: bounded, a JSON object, canonical JSON (integers within
/// ±(2^53−1), no floats). Public for the `canonical_json` and
/// `event_content` fuzz targets (`fuzz/`): a client can send any bytes.
#[doc(hidden)]
pub fn event_content(body: &[u8]) -> Result<ruma::CanonicalJsonObject, MatrixError> {
    if body.len() > MAX_EVENT_BODY {
        return Err(MatrixError::too_large("event content is too large"));
    }
    let v: Map<String, Value> = json_bytes(body)?;
    Ok(to_canonical_json(v)?)
}

/// `POST /createRoom`.
pub async fn create_room(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let mut body: CreateRoomRequest = json_body(&req)?;
    // Another server's invitee is not in the room yet: its server must
    // co-sign the invite (server-server API "Inviting to a room"), so it
    // goes through `/invite` once the room exists, as `/rooms/{}/invite`.
    let mut remote = Vec::new();
    body.invite
        .retain(|u| match OwnedUserId::try_from(u.as_str()) {
            Ok(id) if id.server_name() != state.key.server_name => {
                remote.push(id);
                false
            }
            _ => true,
        });
    let room_id = client::create_room(&state.mesh, who.user_id.clone(), body).await?;
    for target in remote {
        let room = OwnedRoomId::try_from(room_id.to_string().as_str())
            .map_err(|_| MatrixError::invalid_param("Invalid room id"))?;
        crate::federation::membership::invite_remote(
            &state,
            room,
            who.user_id.clone(),
            target,
            None,
        )
        .await?;
    }
    Ok(Response::json(200, &json!({ "room_id": room_id })))
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
pub async fn send(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    // `rc_message`, shard-local (crate::ratelimit).
    state.limits.take(Action::Message, who.user_id.as_str())?;
    let room_id = room_param(&req)?;
    let event_type = req.param_str("eventType")?.into_owned();
    let txn = req.param_str("txnId")?.into_owned();
    let content = content_body(&req)?;
    let id = client::send_event(
        &state.mesh,
        EventRequest {
            room_id,
            sender: who.user_id,
            event_type,
            state_key: None,
            content,
            txn: Some((who.device_id, txn)),
            redacts: None,
        },
    )
    .await?;
    Ok(Response::json(200, &json!({ "event_id": id })))
}

fn state_key_param(req: &Request) -> Result<String, MatrixError> {
    Ok(req
        .raw_param("stateKey")
        .map(|_| req.param_str("stateKey").map(|s| s.into_owned()))
        .transpose()?
        .unwrap_or_default())
}

/// `PUT /rooms/{roomId}/state/{eventType}[/{stateKey}]`.
pub async fn put_state(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    // `rc_message`, shard-local (crate::ratelimit).
    state.limits.take(Action::Message, who.user_id.as_str())?;
    let room_id = room_param(&req)?;
    let event_type = req.param_str("eventType")?.into_owned();
    let state_key = state_key_param(&req)?;
    let content = content_body(&req)?;
    if event_type == "m.room.canonical_alias" && state_key.is_empty() {
        check_canonical_alias(&state, &room_id, &content).await?;
    }
    let id = client::send_event(
        &state.mesh,
        EventRequest {
            room_id,
            sender: who.user_id,
            event_type,
            state_key: Some(state_key),
            content,
            txn: None,
            redacts: None,
        },
    )
    .await?;
    Ok(Response::json(200, &json!({ "event_id": id })))
}

/// Spec `PUT /rooms/{roomId}/state/...` errors: the aliases of a canonical
/// alias event must be valid (`M_INVALID_PARAM`) and the ones it adds must
/// point to this room (`M_BAD_ALIAS`). Checked before the event is built,
/// so this comes before the auth rules' 403.
async fn check_canonical_alias(
    state: &ShardState,
    room_id: &OwnedRoomId,
    content: &ruma::CanonicalJsonObject,
) -> Result<(), MatrixError> {
    let json = serde_json::to_value(content).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let new = json.as_object().cloned().unwrap_or_default();
    let previous = alias::current_canonical(&state.db, room_id).await?;
    alias::check_canonical(&state.db, room_id, &new, previous.as_ref()).await?;
    Ok(())
}

/// `GET /rooms/{roomId}/state/{eventType}[/{stateKey}]`.
pub async fn get_state_event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let event_type = req.param_str("eventType")?.into_owned();
    let state_key = state_key_param(&req)?;
    let content =
        client::get_state_event(&state.mesh, who.user_id, room_id, event_type, state_key).await?;
    Ok(Response::json(200, &content))
}

/// `GET /rooms/{roomId}/state`.
pub async fn get_state(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    // As `/members`: the whole state of a partial-state room waits for
    // its resync (Synapse's current-state reads await the full state).
    if !crate::rooms::partial::wait_full(&state.db, &room_id, MEMBERS_WAIT).await? {
        tracing::info!(room = %room_id, "state of a partial-state room answered before its resync");
    }
    // The whole state of a big room is built in memory (`admission`).
    let _permit = state
        .admission
        .enter(Work::RoomState, who.user_id.as_str())
        .await?;
    let events = client::get_state(&state.mesh, who.user_id, room_id).await?;
    Ok(Response::json(200, &events))
}

async fn membership(
    state: &ShardState,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<(), MatrixError> {
    client::set_membership(&state.mesh, room_id, sender, target, membership, reason).await?;
    Ok(())
}

/// The optional body of `POST /join` and `/leave`: clients send `{}`,
/// `{"reason": …}` or nothing at all, so an empty body is `{}` here.
#[derive(Deserialize, Default)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /rooms/{roomId}/join` and `POST /join/{roomIdOrAlias}` (local
/// rooms only, by id or local alias: federation joins are not there yet).
pub async fn join(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let raw = req
        .raw_param("roomId")
        .map(|_| req.param_str("roomId"))
        .unwrap_or_else(|| req.param_str("roomIdOrAlias"))?;
    // Servers to join through if no user of ours is in the room
    // (`server_name` is the older name of `via`).
    let mut via: Vec<String> = req
        .query_params("via")
        .into_iter()
        .chain(req.query_params("server_name"))
        .map(|s| s.into_owned())
        .collect();
    let room_id = if raw.starts_with('#') {
        let a = alias::parse(&raw).map_err(|e| MatrixError::from(e.into_room_error()))?;
        if a.server_name() == state.key.server_name {
            super::directory::resolve(&state, &a).await?
        } else {
            let (room, servers) = crate::federation::join::resolve_alias(&state, &a).await?;
            via.extend(servers);
            room
        }
    } else {
        OwnedRoomId::try_from(raw.as_ref())
            .map_err(|_| MatrixError::invalid_param("Invalid room id"))?
    };
    // An admin deleted it with `block` (admin API, `rooms::purge`).
    if crate::rooms::purge::is_blocked(&state.db, room_id.as_str()).await? {
        return Err(MatrixError::forbidden(
            "This room has been blocked on this server",
        ));
    }
    let body: ReasonBody = optional_json_body(&req)?;
    state.limits.take(Action::JoinRoom, room_id.as_str())?;
    match crate::federation::join::candidates(&state, &who.user_id, &room_id, via).await? {
        Some(servers) if !servers.is_empty() => {
            state
                .limits
                .take(Action::JoinRemote, who.user_id.as_str())?;
            crate::federation::join::join_remote(&state, &who.user_id, &room_id, &servers).await?;
            return Ok(Response::json(200, &json!({ "room_id": room_id })));
        }
        Some(_) => {}
        // We are in the room: an invite kept for this user is applied
        // first (it may not have come through /send yet).
        None => crate::federation::join::apply_kept_invite(&state, &who.user_id, &room_id).await?,
    }
    state.limits.take(Action::JoinLocal, who.user_id.as_str())?;
    let target = who.user_id.to_string();
    membership(
        &state,
        room_id.clone(),
        who.user_id,
        &target,
        "join",
        body.reason,
    )
    .await?;
    Ok(Response::json(200, &json!({ "room_id": room_id })))
}

/// `POST /rooms/{roomId}/leave`.
pub async fn leave(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let body: ReasonBody = optional_json_body(&req)?;
    let rejected = crate::federation::join::reject_remote_invite(
        &state,
        &who.user_id,
        &room_id,
        body.reason.clone(),
    )
    .await?;
    if rejected {
        return Ok(Response::json(200, &json!({})));
    }
    let target = who.user_id.to_string();
    membership(&state, room_id, who.user_id, &target, "leave", body.reason).await?;
    Ok(Response::json(200, &json!({})))
}

#[derive(Deserialize)]
struct InviteBody {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /rooms/{roomId}/invite`.
pub async fn invite(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let body: InviteBody = json_body(&req)?;
    let target = OwnedUserId::try_from(body.user_id.as_str())
        .map_err(|_| MatrixError::invalid_param("Invalid user id"))?;
    if target.server_name() != state.key.server_name {
        // Another server's user: their server co-signs first.
        crate::federation::membership::invite_remote(
            &state,
            room_id,
            who.user_id,
            target,
            body.reason,
        )
        .await?;
        return Ok(Response::json(200, &json!({})));
    }
    membership(
        &state,
        room_id,
        who.user_id,
        target.as_str(),
        "invite",
        body.reason,
    )
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `GET /joined_rooms`.
pub async fn joined_rooms(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let rooms = client::joined_rooms(&state.db, who.user_id.as_str()).await?;
    Ok(Response::json(200, &json!({ "joined_rooms": rooms })))
}

#[derive(Deserialize)]
struct TargetBody {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Shared by kick, ban and unban: the target's new membership, decided by
/// the room's auth rules (power levels `kick`/`ban`, the target's current
/// membership), so a forbidden change is a 403 from the owner shard.
async fn change_other(state: &ShardState, req: &Request, membership: &str) -> HandlerResult {
    let who = user(state, req).await?;
    let room_id = room_param(req)?;
    let body: TargetBody = json_body(req)?;
    let target = OwnedUserId::try_from(body.user_id.as_str())
        .map_err(|_| MatrixError::invalid_param("Invalid user id"))?;
    client::set_membership(
        &state.mesh,
        room_id,
        who.user_id,
        target.as_str(),
        membership,
        body.reason,
    )
    .await?;
    Ok(Response::json(200, &json!({})))
}

/// `POST /rooms/{roomId}/kick`: the target's membership becomes `leave`.
pub async fn kick(state: Rc<ShardState>, req: Request) -> HandlerResult {
    change_other(&state, &req, "leave").await
}

/// `POST /rooms/{roomId}/ban`.
pub async fn ban(state: Rc<ShardState>, req: Request) -> HandlerResult {
    change_other(&state, &req, "ban").await
}

/// `POST /rooms/{roomId}/unban`: a banned target goes back to `leave`.
pub async fn unban(state: Rc<ShardState>, req: Request) -> HandlerResult {
    change_other(&state, &req, "leave").await
}

/// How long `/members` waits for a partial-state room's full state.
const MEMBERS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /rooms/{roomId}/members?membership=&not_membership=`.
pub async fn members(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    const KINDS: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];
    let filter = |name: &str| -> Result<Option<String>, MatrixError> {
        match req.query_param(name) {
            None => Ok(None),
            Some(v) if KINDS.contains(&v.as_ref()) => Ok(Some(v.into_owned())),
            Some(v) => Err(MatrixError::invalid_param(format!(
                "{name} must be one of {KINDS:?}, not {v:?}"
            ))),
        }
    };
    let (membership, not_membership) = (filter("membership")?, filter("not_membership")?);
    // A partial-state room's members are mostly unknown: as Synapse
    // (its current-state reads await the full state), wait for the
    // resync — bounded; past it, what is known is answered.
    if !crate::rooms::partial::wait_full(&state.db, &room_id, MEMBERS_WAIT).await? {
        tracing::info!(room = %room_id, "members of a partial-state room answered before its resync");
    }
    // Every member event of a big room is built in memory (`admission`).
    let _permit = state
        .admission
        .enter(Work::RoomState, who.user_id.as_str())
        .await?;
    if let Some(at) = super::timeline::token_param(&req, "at")? {
        let chunk = super::timeline::members_at(
            &state,
            &who,
            &room_id,
            &at,
            membership.as_deref(),
            not_membership.as_deref(),
        )
        .await?;
        return Ok(Response::json(200, &json!({ "chunk": chunk })));
    }
    let chunk = client::members(
        &state.mesh,
        who.user_id,
        room_id,
        membership,
        not_membership,
    )
    .await?;
    Ok(Response::json(200, &json!({ "chunk": chunk })))
}

/// `GET /rooms/{roomId}/joined_members`.
pub async fn joined_members(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let joined = client::joined_members(&state.mesh, who.user_id, room_id).await?;
    Ok(Response::json(200, &json!({ "joined": joined })))
}

//! Membership over federation, the HTTP edge (server-server "Joining
//! Rooms", "Leaving Rooms", "Knocking", "Inviting to a room"):
//! `make_join` / `make_leave` / `make_knock` hand out a template,
//! `send_join` (v1, v2) / `send_leave` (v1, v2) / `send_knock` take the
//! signed event back, `invite` (v1, v2) co-signs an invite of one of our
//! users. The work is `rooms::template` and `federation::membership`.
//! v1 answers are `[200, body]`, as the spec keeps them.

use std::rc::Rc;

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{json, Value};

use crate::api::util::json_body;
use crate::events::RoomVersion;
use crate::federation::membership::{receive_invite, receive_membership, room_version};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::{client, join_state};
use crate::shard_state::ShardState;

use super::auth::authenticate;

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(req.param_str("roomId")?.as_ref())
        .map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn user_param(req: &Request) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(req.param_str("userId")?.as_ref())
        .map_err(|_| MatrixError::invalid_param("Invalid user id"))
}

/// Room versions the asking server supports (`ver`; absent means only
/// version 1, as the spec says).
fn supports(req: &Request, version: RoomVersion) -> bool {
    let vers = req.query_params("ver");
    if vers.is_empty() {
        return version.as_str() == "1";
    }
    vers.iter().any(|v| v.as_ref() == version.as_str())
}

async fn make(
    state: Rc<ShardState>,
    req: Request,
    membership: &'static str,
    negotiate: bool,
) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let user = user_param(&req)?;
    if user.server_name().as_str() != origin.0 {
        return Err(MatrixError::forbidden(
            "The user must belong to the requesting server",
        ));
    }
    let version = room_version(&state, &room).await?;
    if negotiate && !supports(&req, version) {
        return Err(MatrixError::incompatible_room_version(version.as_str()));
    }
    if !crate::federation::inbound::server_allowed_in(&state, &room, &origin.0).await? {
        return Err(MatrixError::forbidden(
            "Server is banned from this room by its server ACL",
        ));
    }
    let (version, event) = client::membership_template(&state.mesh, room, user, membership).await?;
    Ok(Response::json(
        200,
        &json!({ "room_version": version.as_str(), "event": event }),
    ))
}

pub(super) async fn make_join(state: Rc<ShardState>, req: Request) -> HandlerResult {
    make(state, req, "join", true).await
}

pub(super) async fn make_leave(state: Rc<ShardState>, req: Request) -> HandlerResult {
    make(state, req, "leave", false).await
}

pub(super) async fn make_knock(state: Rc<ShardState>, req: Request) -> HandlerResult {
    make(state, req, "knock", true).await
}

/// The body of a `send_join` answer (v2 shape).
async fn send_join(state: &Rc<ShardState>, req: &Request) -> Result<Value, MatrixError> {
    let origin = authenticate(state, req).await?;
    let room = room_param(req)?;
    let event_id = req.param_str("eventId")?.into_owned();
    let body: Value = json_body(req)?;
    let (_, id) = receive_membership(state, &origin.0, &room, &event_id, body, "join").await?;
    let omit_members = req.query_param("omit_members").as_deref() == Some("true");
    let js = join_state::join_state(&state.db, &room, id.as_str(), omit_members).await?;
    let mut answer = json!({
        "origin": state.config.server_name,
        "state": js.state,
        "auth_chain": js.auth_chain,
        "event": js.event,
        "members_omitted": omit_members,
    });
    if omit_members {
        answer["servers_in_room"] = json!(js.servers_in_room);
    }
    Ok(answer)
}

pub(super) async fn send_join_v1(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let body = send_join(&state, &req).await?;
    Ok(Response::json(200, &json!([200, body])))
}

pub(super) async fn send_join_v2(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let body = send_join(&state, &req).await?;
    Ok(Response::json(200, &body))
}

async fn send_leave(state: &Rc<ShardState>, req: &Request) -> Result<(), MatrixError> {
    let origin = authenticate(state, req).await?;
    let room = room_param(req)?;
    let event_id = req.param_str("eventId")?.into_owned();
    let body: Value = json_body(req)?;
    receive_membership(state, &origin.0, &room, &event_id, body, "leave").await?;
    Ok(())
}

pub(super) async fn send_leave_v1(state: Rc<ShardState>, req: Request) -> HandlerResult {
    send_leave(&state, &req).await?;
    Ok(Response::json(200, &json!([200, {}])))
}

pub(super) async fn send_leave_v2(state: Rc<ShardState>, req: Request) -> HandlerResult {
    send_leave(&state, &req).await?;
    Ok(Response::json(200, &json!({})))
}

pub(super) async fn send_knock(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let event_id = req.param_str("eventId")?.into_owned();
    let body: Value = json_body(&req)?;
    receive_membership(&state, &origin.0, &room, &event_id, body, "knock").await?;
    let stripped = join_state::stripped_state(&state.db, &room).await?;
    Ok(Response::json(
        200,
        &json!({ "knock_room_state": stripped }),
    ))
}

async fn invite(
    state: &Rc<ShardState>,
    req: &Request,
    event: Value,
    version: &str,
    invite_room_state: Value,
) -> Result<Value, MatrixError> {
    let origin = authenticate(state, req).await?;
    let room = room_param(req)?;
    let event_id = req.param_str("eventId")?.into_owned();
    let version =
        RoomVersion::parse(version).map_err(|_| MatrixError::incompatible_room_version(version))?;
    let signed = receive_invite(
        state,
        &origin.0,
        &room,
        &event_id,
        event,
        version,
        invite_room_state,
    )
    .await?;
    serde_json::to_value(signed).map_err(|_| MatrixError::unknown("Cannot serialize the event"))
}

/// v1: the body is the event; the room version is 1 unless the event's
/// room says otherwise (we only take versions we know).
pub(super) async fn invite_v1(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let event: Value = json_body(&req)?;
    let state_hint = event
        .get("unsigned")
        .and_then(|u| u.get("invite_room_state"))
        .cloned()
        .unwrap_or(json!([]));
    let signed = invite(&state, &req, event, "1", state_hint).await?;
    Ok(Response::json(200, &json!([200, { "event": signed }])))
}

pub(super) async fn invite_v2(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let body: Value = json_body(&req)?;
    let version = body
        .get("room_version")
        .and_then(Value::as_str)
        .ok_or_else(|| MatrixError::bad_json("room_version is required"))?
        .to_owned();
    let event = body
        .get("event")
        .cloned()
        .ok_or_else(|| MatrixError::bad_json("event is required"))?;
    let state_hint = body.get("invite_room_state").cloned().unwrap_or(json!([]));
    let signed = invite(&state, &req, event, &version, state_hint).await?;
    Ok(Response::json(200, &json!({ "event": signed })))
}

//! Endpoints of the ephemeral and per-user data (client-server API
//! "Typing Notifications", "Receipts", "Read and unread markers", "Client
//! Config", "Room Tagging", "Presence", "Send-to-Device messaging"): thin
//! handlers over `crate::ephemeral`, which runs each write on the shard
//! owning the data.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{self, Requester};
use crate::ephemeral::account_data::{self as ad, Update};
use crate::ephemeral::receipts::{self, ReceiptType};
use crate::ephemeral::to_device::{self, Messages, Sender};
use crate::ephemeral::typing::DEFAULT_TIMEOUT;
use crate::ephemeral::{presence, service, EphError};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::shard_state::ShardState;

use crate::api::util::{json_body, optional_json_body};

fn empty() -> HandlerResult {
    Ok(Response::json(200, &json!({})))
}

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn user_param(req: &Request) -> Result<OwnedUserId, MatrixError> {
    let raw = req.param_str("userId")?;
    OwnedUserId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid user id"))
}

/// The requester, who must be the `{userId}` of the path (account data,
/// tags, typing and presence are set for oneself only).
async fn own_user(state: &ShardState, req: &Request, what: &str) -> Result<Requester, MatrixError> {
    let who = auth::require_user(state, req).await?;
    if user_param(req)? != who.user_id {
        return Err(MatrixError::forbidden(format!(
            "Cannot {what} for other users"
        )));
    }
    Ok(who)
}

fn event_id(raw: &str) -> Result<OwnedEventId, MatrixError> {
    OwnedEventId::try_from(raw).map_err(|_| MatrixError::not_found("event not found"))
}

// ---- typing -------------------------------------------------------------

#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    #[serde(default)]
    timeout: Option<u64>,
}

/// `PUT /rooms/{roomId}/typing/{userId}`.
pub async fn typing(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "set the typing state").await?;
    let room = room_param(&req)?;
    let body: TypingBody = json_body(&req)?;
    let timeout = body
        .typing
        .then(|| body.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_millis));
    service::set_typing(&state.mesh, who.user_id, room, timeout).await?;
    empty()
}

// ---- receipts and read markers -------------------------------------------

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub async fn receipt(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room = room_param(&req)?;
    let kind = ReceiptType::parse(&req.param_str("receiptType")?)?;
    let event = event_id(&req.param_str("eventId")?)?;
    let body: Map<String, Value> = optional_json_body(&req)?;
    let thread_id = receipts::parse_thread_id(&body)?;
    if kind == ReceiptType::FullyRead {
        // Spec: `m.fully_read` here "effectively calls /read_markers".
        if thread_id.is_some() {
            return Err(MatrixError::invalid_param(
                "thread_id is not allowed for m.fully_read",
            ));
        }
        fully_read(&state, who.user_id, room, event).await?;
    } else {
        receipts::post_receipt(&state.mesh, who.user_id, room, kind, event, thread_id).await?;
    }
    empty()
}

async fn fully_read(
    state: &ShardState,
    user: OwnedUserId,
    room: OwnedRoomId,
    event: OwnedEventId,
) -> Result<(), EphError> {
    receipts::check_room_event(&state.mesh, user.clone(), room.clone(), event.clone()).await?;
    ad::update(
        &state.mesh,
        user,
        Some(room),
        Update::FullyRead { event_id: event },
    )
    .await
}

/// `POST /rooms/{roomId}/read_markers`: `m.fully_read`, `m.read`,
/// `m.read.private`, each optional (spec "Fully read markers").
pub async fn read_markers(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room = room_param(&req)?;
    let body: Map<String, Value> = optional_json_body(&req)?;
    let field = |name: &str| -> Result<Option<OwnedEventId>, MatrixError> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => OwnedEventId::try_from(s.as_str())
                .map(Some)
                .map_err(|_| MatrixError::invalid_param(format!("{name} is not an event id"))),
            Some(_) => Err(MatrixError::bad_json(format!("{name} must be a string"))),
        }
    };
    let (full, read, private) = (
        field("m.fully_read")?,
        field("m.read")?,
        field("m.read.private")?,
    );
    if let Some(e) = full {
        fully_read(&state, who.user_id.clone(), room.clone(), e).await?;
    }
    for (kind, ev) in [
        (ReceiptType::Read, read),
        (ReceiptType::ReadPrivate, private),
    ] {
        if let Some(e) = ev {
            receipts::post_receipt(
                &state.mesh,
                who.user_id.clone(),
                room.clone(),
                kind,
                e,
                None,
            )
            .await?;
        }
    }
    empty()
}

// ---- account data and tags -------------------------------------------------

/// `PUT /user/{userId}[/rooms/{roomId}]/account_data/{type}`.
pub async fn put_account_data(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "add account data").await?;
    let room = req
        .raw_param("roomId")
        .map(|_| room_param(&req))
        .transpose()?;
    let kind = req.param_str("type")?.into_owned();
    ad::check_settable(&kind)?;
    // A JSON object is required (an empty body is not JSON: 400 M_NOT_JSON).
    let content: Map<String, Value> = req.json()?;
    ad::update(
        &state.mesh,
        who.user_id,
        room,
        Update::Replace {
            kind,
            content: Value::Object(content),
        },
    )
    .await?;
    empty()
}

/// `GET /user/{userId}[/rooms/{roomId}]/account_data/{type}`.
pub async fn get_account_data(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "get account data").await?;
    let room = req
        .raw_param("roomId")
        .map(|_| room_param(&req))
        .transpose()?;
    let kind = req.param_str("type")?;
    match ad::get(&state.db, &who.user_id, room.as_ref(), &kind).await? {
        Some(c) => Ok(Response::json(200, &c)),
        None => Err(MatrixError::not_found("Account data not found")),
    }
}

/// `GET /user/{userId}/rooms/{roomId}/tags`.
pub async fn get_tags(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "get tags").await?;
    let room = room_param(&req)?;
    let tags = ad::tags(&state.db, &who.user_id, &room).await?;
    Ok(Response::json(200, &json!({ "tags": tags })))
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn put_tag(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "add tags").await?;
    let room = room_param(&req)?;
    let tag = req.param_str("tag")?.into_owned();
    let content: Value = req.json()?;
    ad::check_tag(&tag, &content)?;
    ad::update(
        &state.mesh,
        who.user_id,
        Some(room),
        Update::PutTag { tag, content },
    )
    .await?;
    empty()
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn delete_tag(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "remove tags").await?;
    let room = room_param(&req)?;
    let tag = req.param_str("tag")?.into_owned();
    ad::update(
        &state.mesh,
        who.user_id,
        Some(room),
        Update::DeleteTag { tag },
    )
    .await?;
    empty()
}

// ---- presence ---------------------------------------------------------------

#[derive(Deserialize)]
struct PresenceBody {
    presence: String,
    #[serde(default)]
    status_msg: Option<String>,
}

/// `PUT /presence/{userId}/status`.
pub async fn put_presence(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = own_user(&state, &req, "set presence").await?;
    let body: PresenceBody = json_body(&req)?;
    presence::set(&state.mesh, who.user_id, body.presence, body.status_msg).await?;
    empty()
}

/// `GET /presence/{userId}/status`.
pub async fn get_presence(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let target = user_param(&req)?;
    let body = presence::get(&state, &who.user_id, target).await?;
    Ok(Response::json(200, &body))
}

// ---- send-to-device ---------------------------------------------------------

#[derive(Deserialize)]
struct SendToDeviceBody {
    messages: BTreeMap<String, BTreeMap<String, Value>>,
}

/// `PUT /sendToDevice/{eventType}/{txnId}`.
pub async fn send_to_device(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let event_type = req.param_str("eventType")?.into_owned();
    let txn_id = req.param_str("txnId")?.into_owned();
    let body: SendToDeviceBody = req.json()?;
    let mut messages = Messages::new();
    for (user, devices) in body.messages {
        let user = OwnedUserId::try_from(user.as_str())
            .map_err(|_| MatrixError::invalid_param(format!("Invalid user id {user:?}")))?;
        messages.insert(user, devices);
    }
    to_device::send(
        &state.mesh,
        &state.config.server_name,
        Sender {
            user_id: who.user_id,
            device_id: who.device_id,
            txn_id,
        },
        event_type,
        messages,
    )
    .await?;
    empty()
}

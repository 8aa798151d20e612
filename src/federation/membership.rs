//! The resident side of membership over federation (server-server
//! "Joining Rooms", "Leaving Rooms", "Knocking", "Inviting to a room"):
//! a remote server sends back the membership event it signed from our
//! template, and we check it, apply it through the rooms' one entry point
//! and answer only once it is committed (a `200` to `send_join` means the
//! join is durable).
//!
//! An invite for one of our users is the other way round: the room is
//! elsewhere; we check it, add our signature and keep it
//! (`remote_invites`) for the invitee.

use std::rc::Rc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::db::{SqlValue, Write};
use crate::events::{add_signature, event_id_of, RoomVersion};
use crate::rooms::receive::{Applied, Received};
use crate::rooms::{client, RoomError};
use crate::shard_state::ShardState;

fn bad(m: impl Into<String>) -> RoomError {
    RoomError::BadJson(m.into())
}

fn string_field<'a>(pdu: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match pdu.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn membership_of(pdu: &CanonicalJsonObject) -> Option<&str> {
    match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The room's version, or `NotFound` for a room we do not have.
pub async fn room_version(
    state: &ShardState,
    room: &OwnedRoomId,
) -> Result<RoomVersion, RoomError> {
    let row = state
        .db
        .query_opt(
            "SELECT room_version FROM rooms WHERE room_id = $1",
            &[&room.as_str()],
        )
        .await?
        .ok_or_else(|| RoomError::NotFound(format!("Unknown room {room}")))?;
    Ok(RoomVersion::parse(row.get::<&str>(0)?)?)
}

/// Checks that `body` is `origin`'s own user's `membership` event for
/// `room`, with the id `event_id`, validly signed; returns it (redacted if
/// its content hash did not match, as the spec says).
async fn checked_membership_event(
    state: &Rc<ShardState>,
    origin: &str,
    room: &OwnedRoomId,
    event_id: &str,
    body: Value,
    membership: &str,
    version: RoomVersion,
) -> Result<CanonicalJsonObject, RoomError> {
    let pdu = match serde_json::from_value::<CanonicalJsonValue>(body) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => return Err(bad("The event must be a JSON object")),
    };
    let id = event_id_of(&pdu, version).map_err(|e| bad(format!("invalid event: {e}")))?;
    if id.as_str() != event_id {
        return Err(bad("The event id does not match the event"));
    }
    if string_field(&pdu, "room_id") != Some(room.as_str()) {
        return Err(bad("The event is not of this room"));
    }
    if string_field(&pdu, "type") != Some("m.room.member") {
        return Err(bad("Not a membership event"));
    }
    let sender = string_field(&pdu, "sender")
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| bad("The event has no valid sender"))?;
    if string_field(&pdu, "state_key") != Some(sender.as_str()) {
        return Err(bad("The state_key must be the sender"));
    }
    if sender.server_name().as_str() != origin {
        return Err(RoomError::Forbidden(
            "The sender must belong to the requesting server".into(),
        ));
    }
    if membership_of(&pdu) != Some(membership) {
        return Err(bad(format!("The membership must be {membership}")));
    }
    ruma::state_res::check_pdu_format(&pdu, &version.rules().event_format)
        .map_err(|e| bad(format!("invalid event: {e}")))?;
    let mut checked = super::inbound::verify_pdus(state, version, vec![(id, pdu)]).await?;
    match checked.pop() {
        Some((_, Ok(pdu))) => Ok(pdu),
        Some((_, Err(e))) => Err(RoomError::Forbidden(e)),
        None => Err(RoomError::Internal("no verification result".into())),
    }
}

/// `send_join` / `send_leave` / `send_knock`: checks the event, applies it
/// and returns once it is committed. `Forbidden` if the room's rules
/// refuse it.
pub async fn receive_membership(
    state: &Rc<ShardState>,
    origin: &str,
    room: &OwnedRoomId,
    event_id: &str,
    body: Value,
    membership: &str,
) -> Result<(RoomVersion, OwnedEventId), RoomError> {
    let version = room_version(state, room).await?;
    if !super::inbound::server_allowed_in(state, room, origin).await? {
        return Err(RoomError::Forbidden(
            "Server is banned from this room by its server ACL".into(),
        ));
    }
    let pdu =
        checked_membership_event(state, origin, room, event_id, body, membership, version).await?;
    let received = Received {
        checked: true,
        ..Received::new(room.clone(), pdu)
    };
    match client::apply_pdu(&state.mesh, received).await? {
        Applied::Accepted(id) => {
            forward(state, room, &id, origin).await?;
            Ok((version, id))
        }
        // Backfilled: never asked for here (no `Received::backfill`).
        Applied::AlreadyKnown(id) | Applied::Backfilled(id) => Ok((version, id)),
        Applied::SoftFailed(_) => Err(RoomError::Forbidden(
            "The event is not allowed by the room's current state".into(),
        )),
        Applied::Rejected { reason, .. } => Err(RoomError::Forbidden(reason)),
        Applied::Outlier { .. } => Err(bad(
            "The event's prev_events are unknown here; use a fresh make_ template",
        )),
        Applied::MissingAuthEvents(ids) => Err(bad(format!(
            "The event's auth_events are unknown here: {ids:?}"
        ))),
    }
}

/// The resident server passes a membership event it accepted from
/// `origin` on to the room's other servers (server-server "Joining
/// Rooms"). Queued before `send_join` is answered.
async fn forward(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    event_id: &OwnedEventId,
    origin: &str,
) -> Result<(), RoomError> {
    let ours = state.key.server_name.as_str();
    let mut dests = crate::rooms::directory::joined_servers(&state.db, room, ours).await?;
    dests.retain(|s| s != ours && s != origin);
    if dests.is_empty() {
        return Ok(());
    }
    let w = Write::new().statement(
        "INSERT INTO federation_outbox (destination, room_id, event_id, queued_ts) \
         SELECT d, $2, $3, $4 FROM unnest($1::text[]) AS t(d)",
        vec![
            SqlValue::TextArray(dests.clone()),
            room.as_str().into(),
            event_id.as_str().into(),
            crate::primitives::unix_ms_i64().into(),
        ],
    );
    state.writer.submit(w).await?;
    super::sender::kick_destinations(dests);
    Ok(())
}

/// `PUT /invite/{roomId}/{eventId}` (v1 and v2) for one of our users: the
/// event co-signed by us. `NotFound` if the invitee is not a user here.
pub async fn receive_invite(
    state: &Rc<ShardState>,
    origin: &str,
    room: &OwnedRoomId,
    event_id: &str,
    event: Value,
    version: RoomVersion,
    invite_room_state: Value,
) -> Result<CanonicalJsonObject, RoomError> {
    let mut pdu = match serde_json::from_value::<CanonicalJsonValue>(event) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => return Err(bad("The event must be a JSON object")),
    };
    let id = event_id_of(&pdu, version).map_err(|e| bad(format!("invalid event: {e}")))?;
    if id.as_str() != event_id {
        return Err(bad("The event id does not match the event"));
    }
    if string_field(&pdu, "room_id") != Some(room.as_str())
        || string_field(&pdu, "type") != Some("m.room.member")
        || membership_of(&pdu) != Some("invite")
    {
        return Err(bad("Not an invite to this room"));
    }
    let invitee = string_field(&pdu, "state_key")
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| bad("The invite has no valid state_key"))?;
    if invitee.server_name() != state.key.server_name {
        return Err(bad("The invitee is not a user of this server"));
    }
    let sender = string_field(&pdu, "sender")
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or_else(|| bad("The event has no valid sender"))?;
    if sender.server_name().as_str() != origin {
        return Err(RoomError::Forbidden(
            "The sender must belong to the requesting server".into(),
        ));
    }
    let exists = state
        .db
        .query_opt(
            "SELECT 1 FROM users WHERE user_id = $1",
            &[&invitee.as_str()],
        )
        .await?
        .is_some();
    if !exists {
        return Err(RoomError::NotFound(format!("Unknown user {invitee}")));
    }
    ruma::state_res::check_pdu_format(&pdu, &version.rules().event_format)
        .map_err(|e| bad(format!("invalid event: {e}")))?;
    let checked = super::inbound::verify_pdus(state, version, vec![(id.clone(), pdu.clone())])
        .await?
        .pop();
    match checked {
        Some((_, Ok(p))) if p == pdu => {}
        Some((_, Ok(_))) => return Err(RoomError::Forbidden("Content hash mismatch".into())),
        Some((_, Err(e))) => return Err(RoomError::Forbidden(e)),
        None => return Err(RoomError::Internal("no verification result".into())),
    }
    add_signature(&mut pdu, version, &state.key)
        .map_err(|e| RoomError::Internal(format!("cannot co-sign: {e}")))?;
    let text = serde_json::to_value(&pdu).map_err(|e| RoomError::Internal(e.to_string()))?;
    super::invites::keep(state, room, &invitee, &id, version, text, invite_room_state).await?;
    Ok(pdu)
}

/// A local user's invite of a user on another server (server-server
/// "Inviting to a room", v2): built here, co-signed by the invitee's server,
/// then applied like a received PDU (and so sent to the room's other
/// servers by the outbound sender). `Forbidden` if that server refuses.
pub async fn invite_remote(
    state: &Rc<ShardState>,
    room: OwnedRoomId,
    sender: OwnedUserId,
    target: OwnedUserId,
    reason: Option<String>,
) -> Result<OwnedEventId, RoomError> {
    let (version, pdu) =
        client::build_invite(&state.mesh, room.clone(), sender, target.clone(), reason).await?;
    let id = event_id_of(&pdu, version).map_err(|e| RoomError::Internal(e.to_string()))?;
    let stripped = crate::rooms::join_state::stripped_state(&state.db, &room).await?;
    let body = serde_json::json!({
        "room_version": version.as_str(),
        "event": pdu,
        "invite_room_state": stripped,
    });
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        enc(room.as_str()),
        enc(id.as_str())
    );
    let destination = target.server_name().to_string();
    let answer: Value = state
        .federation
        .request_json(&destination, "PUT", &path, Some(&body))
        .await
        .map_err(|e| {
            RoomError::Forbidden(format!("{destination} did not accept the invite: {e}"))
        })?;
    let signed = match answer
        .get("event")
        .cloned()
        .map(serde_json::from_value::<CanonicalJsonValue>)
    {
        Some(Ok(CanonicalJsonValue::Object(o))) => o,
        _ => {
            return Err(RoomError::Forbidden(format!(
                "{destination} answered the invite without an event"
            )))
        }
    };
    if event_id_of(&signed, version).ok().as_ref() != Some(&id) {
        return Err(RoomError::Forbidden(format!(
            "{destination} changed the invite event"
        )));
    }
    let received = Received {
        checked: true,
        ..Received::new(room, signed)
    };
    match client::apply_pdu(&state.mesh, received).await? {
        Applied::Accepted(id) | Applied::AlreadyKnown(id) => Ok(id),
        Applied::Rejected { reason, .. } => Err(RoomError::Forbidden(reason)),
        other => Err(RoomError::Forbidden(format!(
            "invite not applied: {other:?}"
        ))),
    }
}

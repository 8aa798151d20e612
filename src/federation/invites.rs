//! The invites we keep for our users to rooms hosted elsewhere
//! (`remote_invites`, server-server "Inviting to a room"), as `/sync`
//! sees them: every change of a row is numbered by this shard's persisted
//! stream and announced to the invitee (client-server "Syncing": an
//! invite appears in `rooms.invite` once, at its position, and wakes a
//! parked sync). A rejection, or a retraction by the inviting server,
//! keeps the row as `leave` with the leave event, so the next sync lists
//! the room in `rooms.leave`, as Synapse's out-of-band memberships do.

use std::rc::Rc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;

use crate::db::{SqlValue, Write};
use crate::events::{event_id_of, hash_and_sign, RoomVersion};
use crate::rooms::RoomError;
use crate::shard_state::ShardState;
use crate::stream::{Change, Pos, UserChange};

fn shard_i32(state: &ShardState) -> Result<i32, RoomError> {
    i32::try_from(state.stream.shard()).map_err(|e| RoomError::Internal(e.to_string()))
}

/// Stores a co-signed invite of `invitee` (replacing an older invite or
/// rejection of the same room) and wakes the invitee's syncs. Returns
/// after COMMIT and announcement: a `200` to the inviting server means
/// the invite is durable and visible.
#[allow(clippy::too_many_arguments)]
pub async fn keep(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    invitee: &OwnedUserId,
    id: &OwnedEventId,
    version: RoomVersion,
    event: Value,
    invite_room_state: Value,
) -> Result<(), RoomError> {
    let ticket = state.stream.allocate();
    let pos = ticket.pos();
    let w = Write::new()
        .statement(
            "DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2 AND event_id <> $3",
            vec![
                SqlValue::from(room.as_str()),
                invitee.as_str().into(),
                id.as_str().into(),
            ],
        )
        .statement(
            "INSERT INTO remote_invites (room_id, user_id, event_id, room_version, event, \
             invite_room_state, received_ts, stream_shard, stream_ordering) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
            vec![
                SqlValue::from(room.as_str()),
                invitee.as_str().into(),
                id.as_str().into(),
                version.as_str().into(),
                SqlValue::Jsonb(event),
                SqlValue::Jsonb(invite_room_state),
                crate::primitives::unix_ms_i64().into(),
                shard_i32(state)?.into(),
                pos.into(),
            ],
        );
    let res = state.writer.submit(w).await?;
    // A retried invite already kept is not announced again.
    let inserted = res.get(1).is_some_and(|r| r.rows_affected > 0);
    ticket.publish(poke(invitee, pos, inserted)).await;
    Ok(())
}

fn poke(user: &OwnedUserId, pos: i64, changed: bool) -> Vec<Change> {
    if !changed {
        return Vec::new();
    }
    vec![Change::User {
        user_id: user.clone(),
        pos: Pos::Persisted(pos),
        what: UserChange::Poke,
    }]
}

/// The kept invite of `user` to `room`, if still pending: its sender and
/// room version.
pub async fn pending(
    state: &ShardState,
    user: &OwnedUserId,
    room: &OwnedRoomId,
) -> Result<Option<(Option<String>, String, Value)>, RoomError> {
    let row = state
        .db
        .query_opt(
            "SELECT event->>'sender', room_version, event FROM remote_invites \
             WHERE room_id = $1 AND user_id = $2 AND membership = 'invite' LIMIT 1",
            &[&room.as_str(), &user.as_str()],
        )
        .await?;
    match row {
        Some(r) => Ok(Some((r.get(0)?, r.get(1)?, r.get(2)?))),
        None => Ok(None),
    }
}

/// Marks the pending invite of `user` to `room` left, with `leave` (our
/// rejection or the inviter's retraction), and wakes the user's syncs.
/// `false` if no invite was pending.
pub async fn mark_left(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    leave_id: &OwnedEventId,
    leave: Value,
) -> Result<bool, RoomError> {
    let ticket = state.stream.allocate();
    let pos = ticket.pos();
    let w = Write::new().statement(
        "UPDATE remote_invites SET membership = 'leave', leave_event_id = $3, \
         leave_event = $4, stream_shard = $5, stream_ordering = $6 \
         WHERE room_id = $1 AND user_id = $2 AND membership = 'invite'",
        vec![
            SqlValue::from(room.as_str()),
            user.as_str().into(),
            leave_id.as_str().into(),
            SqlValue::Jsonb(leave),
            shard_i32(state)?.into(),
            pos.into(),
        ],
    );
    let res = state.writer.submit(w).await?;
    let changed = res.first().is_some_and(|r| r.rows_affected > 0);
    ticket.publish(poke(user, pos, changed)).await;
    Ok(changed)
}

/// Our leave for an invite the inviting server could not take back
/// (unreachable, or refusing `make_leave`): built and signed here on top
/// of the invite, never sent. Synapse rejects locally the same way, so a
/// dead server's invite can always be dismissed.
pub fn local_leave(
    state: &ShardState,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    version: RoomVersion,
    invite: &Value,
) -> Result<(OwnedEventId, Value), RoomError> {
    let internal = |e: &dyn std::fmt::Display| RoomError::Internal(format!("local leave: {e}"));
    let invite =
        serde_json::from_value::<CanonicalJsonValue>(invite.clone()).map_err(|e| internal(&e))?;
    let CanonicalJsonValue::Object(invite) = invite else {
        return Err(internal(&"the kept invite is not an object"));
    };
    let invite_id = event_id_of(&invite, version).map_err(|e| internal(&e))?;
    let depth = match invite.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => *d,
        _ => ruma::Int::from(0u32),
    };
    let mut e = CanonicalJsonObject::new();
    let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
    let ids = CanonicalJsonValue::Array(vec![s(invite_id.as_str())]);
    e.insert("type".into(), s("m.room.member"));
    e.insert("room_id".into(), s(room.as_str()));
    e.insert("sender".into(), s(user.as_str()));
    e.insert("state_key".into(), s(user.as_str()));
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), s("leave"));
    e.insert("content".into(), CanonicalJsonValue::Object(content));
    e.insert("prev_events".into(), ids.clone());
    e.insert("auth_events".into(), ids);
    e.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(depth.saturating_add(ruma::Int::from(1u32))),
    );
    e.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(crate::primitives::unix_ms()).unwrap_or_default(),
        ),
    );
    hash_and_sign(&mut e, version, &state.key).map_err(|e| internal(&e))?;
    let id = event_id_of(&e, version).map_err(|e| internal(&e))?;
    let json = serde_json::to_value(&e).map_err(|e| internal(&e))?;
    Ok((id, json))
}

/// A `/send` PDU of a room we do not have: if it takes back an invite we
/// keep (the inviter's server sends the invitee's leave or ban, spec
/// "Leaving Rooms (Rejecting Invites)" seen from the invitee's side), the
/// invite is marked left. Other PDUs of unknown rooms stay ignored.
pub async fn retracted(
    state: &Rc<ShardState>,
    origin: &str,
    room: &OwnedRoomId,
    pdus: &[CanonicalJsonObject],
) -> Result<(), RoomError> {
    let str_of = |p: &CanonicalJsonObject, k: &str| match p.get(k) {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    for pdu in pdus {
        if str_of(pdu, "type").as_deref() != Some("m.room.member") {
            continue;
        }
        let membership = match pdu.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
                Some(CanonicalJsonValue::String(m)) => m.clone(),
                _ => continue,
            },
            _ => continue,
        };
        if membership != "leave" && membership != "ban" {
            continue;
        }
        let Some(target) = str_of(pdu, "state_key").and_then(|k| OwnedUserId::try_from(k).ok())
        else {
            continue;
        };
        let Some(sender) = str_of(pdu, "sender").and_then(|k| OwnedUserId::try_from(k).ok()) else {
            continue;
        };
        if target.server_name() != state.key.server_name || sender.server_name() != origin {
            continue;
        }
        let Some((inviter, version, _)) = pending(state, &target, room).await? else {
            continue;
        };
        // Only the inviting server may take its invite back.
        let inviter_server = inviter
            .and_then(|s| OwnedUserId::try_from(s).ok())
            .map(|u| u.server_name().to_string());
        if inviter_server.as_deref() != Some(origin) {
            continue;
        }
        let Ok(version) = RoomVersion::parse(&version) else {
            continue;
        };
        let Ok(id) = event_id_of(pdu, version) else {
            continue;
        };
        let checked = super::inbound::verify_pdus(state, version, vec![(id.clone(), pdu.clone())])
            .await?
            .pop();
        let Some((_, Ok(p))) = checked else {
            tracing::info!(%origin, %room, "refused an invite retraction");
            continue;
        };
        let json = serde_json::to_value(&p).map_err(|e| RoomError::Internal(e.to_string()))?;
        if mark_left(state, room, &target, &id, json).await? {
            tracing::info!(%origin, %room, user = %target, "invite retracted by its server");
        }
    }
    Ok(())
}

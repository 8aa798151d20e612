//! Receipts (client-server API "Receipts"), stored on the room's owner
//! shard in `receipts`, one row per (room, type, user, thread) as the spec
//! requires ("Each user_id, receipt_type, and categorisation (unthreaded,
//! or thread_id) tuple must be associated with only a single event_id").
//! Also the room-side checks shared with typing and read markers.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{json, Map, Value};

use crate::db::{Pool, Write};
use crate::mesh::{shard_for_room, MeshEndpoint};
use crate::rooms::{RoomError, Rooms};
use crate::stream::{Change, Pos, RoomChange, StreamToken, UserChange};

use super::{on_shard, shard_i32, EphError};

/// Receipt types a client may post (spec `receipts.yaml`: `m.read`,
/// `m.read.private`, and `m.fully_read`, which is a read marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptType {
    Read,
    ReadPrivate,
    FullyRead,
}

impl ReceiptType {
    pub fn parse(s: &str) -> Result<ReceiptType, EphError> {
        match s {
            "m.read" => Ok(ReceiptType::Read),
            "m.read.private" => Ok(ReceiptType::ReadPrivate),
            "m.fully_read" => Ok(ReceiptType::FullyRead),
            _ => Err(EphError::InvalidParam(format!(
                "Receipt type must be 'm.read', 'm.read.private' or 'm.fully_read', not {s:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Read => "m.read",
            ReceiptType::ReadPrivate => "m.read.private",
            ReceiptType::FullyRead => "m.fully_read",
        }
    }
}

/// On the owner shard: `user` must be joined (Synapse answers 403 "not in
/// room" for unknown rooms too).
pub async fn require_joined(
    rooms: &Rooms,
    room: &OwnedRoomId,
    user: &OwnedUserId,
) -> Result<(), EphError> {
    let forbidden = || EphError::Forbidden(format!("{user} is not in room {room}"));
    match rooms.membership(room, user.as_str()).await {
        Ok(Some(m)) if m == "join" => Ok(()),
        Ok(_) | Err(RoomError::NotFound(_)) => Err(forbidden()),
        Err(e) => Err(e.into()),
    }
}

/// On the owner shard: the event must exist in this room (404 otherwise).
pub async fn require_event(
    rooms: &Rooms,
    room: &OwnedRoomId,
    event: &OwnedEventId,
) -> Result<(), EphError> {
    match rooms.event(event).await? {
        Some(p) if &p.room_id == room => Ok(()),
        _ => Err(EphError::NotFound(format!(
            "event {event} not found in {room}"
        ))),
    }
}

/// Checks, on the room's owner, that `user` is joined and `event` is in
/// the room (used by `m.fully_read`, whose data lives on the user's shard).
pub async fn check_room_event(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room: OwnedRoomId,
    event: OwnedEventId,
) -> Result<(), EphError> {
    let owner = shard_for_room(&room, mesh.n_shards());
    on_shard(mesh, owner, move |_| async move {
        let rooms = crate::rooms::local()?;
        require_joined(&rooms, &room, &user).await?;
        require_event(&rooms, &room, &event).await
    })
    .await
}

/// `thread_id` of the body (spec: a non-empty string; absent = unthreaded).
pub fn parse_thread_id(body: &Map<String, Value>) -> Result<Option<String>, EphError> {
    match body.get("thread_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.clone())),
        Some(_) => Err(EphError::InvalidParam(
            "thread_id field must be a non-empty string".into(),
        )),
    }
}

/// Stores an `m.read` / `m.read.private` receipt on the room's owner shard
/// and announces it; returns after COMMIT and announcement. A receipt for
/// an event older than the stored one is ignored, as Synapse does.
pub async fn post_receipt(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room: OwnedRoomId,
    kind: ReceiptType,
    event: OwnedEventId,
    thread_id: Option<String>,
) -> Result<(), EphError> {
    if kind == ReceiptType::FullyRead {
        return Err(EphError::Internal("m.fully_read is a read marker".into()));
    }
    let owner = shard_for_room(&room, mesh.n_shards());
    on_shard(mesh, owner, move |state| async move {
        let rooms = crate::rooms::local()?;
        require_joined(&rooms, &room, &user).await?;
        require_event(&rooms, &room, &event).await?;
        let ticket = state.stream.allocate();
        let pos = ticket.pos();
        let ts = crate::primitives::unix_ms_i64();
        let thread = thread_id.unwrap_or_default();
        let w = Write::new().statement(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, \
             stream_shard, stream_ordering) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE \
             SET event_id = excluded.event_id, ts = excluded.ts, \
             stream_shard = excluded.stream_shard, stream_ordering = excluded.stream_ordering \
             WHERE coalesce((SELECT e.stream_ordering FROM events e \
                             WHERE e.event_id = receipts.event_id), -1) \
                 < coalesce((SELECT e.stream_ordering FROM events e \
                             WHERE e.event_id = excluded.event_id), -1)",
            vec![
                room.as_str().into(),
                kind.as_str().into(),
                user.as_str().into(),
                thread.clone().into(),
                event.as_str().into(),
                ts.into(),
                shard_i32(state.stream.shard())?.into(),
                pos.into(),
            ],
        );
        // On error the ticket is dropped: a gap in the stream.
        let res = state.writer.submit(w).await;
        // Its unread counts are read again (stored or not, or unknown).
        crate::push::unread::local().forget_user(room.as_str(), user.as_str());
        let res = res?;
        let stored = res.first().is_some_and(|r| r.rows_affected > 0);
        let changes = match (stored, kind) {
            (false, _) => Vec::new(),
            (true, ReceiptType::ReadPrivate) => vec![Change::User {
                user_id: user,
                pos: Pos::Persisted(pos),
                what: UserChange::PrivateReceipt { room_id: room },
            }],
            (true, _) => {
                if user.server_name() == state.key.server_name {
                    // Server-server "Receipts": to the room's servers.
                    let servers = rooms.remote_servers(&room).await?;
                    let mut data = serde_json::json!({ "ts": ts });
                    if !thread.is_empty() {
                        data["thread_id"] = thread.clone().into();
                    }
                    crate::federation::sender::queue_edu(
                        &servers,
                        Some(format!("receipt {room} {user} {thread}")),
                        serde_json::json!({"edu_type": "m.receipt", "content": {
                            room.as_str(): {"m.read": {user.as_str(): {
                                "event_ids": [event], "data": data}}}}}),
                    );
                }
                vec![Change::Room {
                    room_id: room,
                    pos: Pos::Persisted(pos),
                    what: RoomChange::Receipt,
                }]
            }
        };
        ticket.publish(changes).await;
        Ok(())
    })
    .await
}

/// The `m.receipt` EDUs for `/sync`, per room: the receipts of `rooms`
/// stored after `since` (all of them when `None`) up to `current`,
/// without other users' `m.read.private` (spec "Private read receipts":
/// servers MUST NOT send them to anyone else).
pub async fn receipts_between(
    db: &Pool,
    user: &str,
    rooms: &[OwnedRoomId],
    since: Option<&StreamToken>,
    current: &StreamToken,
    n_shards: usize,
) -> Result<Vec<(OwnedRoomId, Value)>, EphError> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let room_ids: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let since = since
        .map(|t| t.persisted_vec(n_shards))
        .unwrap_or_else(|| vec![0; n_shards]);
    let upto = current.persisted_vec(n_shards);
    let rows = db
        .query(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts \
             WHERE room_id = ANY($1) AND (receipt_type <> 'm.read.private' OR user_id = $2) \
             AND stream_ordering > coalesce(($3::bigint[])[stream_shard + 1], 0) \
             AND stream_ordering <= coalesce(($4::bigint[])[stream_shard + 1], 0) \
             ORDER BY room_id",
            &[&room_ids, &user, &since, &upto],
        )
        .await?;
    let mut out: Vec<(OwnedRoomId, Value)> = Vec::new();
    let mut contents: Map<String, Value> = Map::new();
    let mut current_room: Option<String> = None;
    let flush = |room: Option<String>, contents: &mut Map<String, Value>, out: &mut Vec<_>| {
        if let Some(r) = room.and_then(|r| OwnedRoomId::try_from(r).ok()) {
            if !contents.is_empty() {
                let content = Value::Object(std::mem::take(contents));
                out.push((r, json!({"type": "m.receipt", "content": content})));
            }
        }
        contents.clear();
    };
    for row in rows {
        let room: String = row.get(0)?;
        let rtype: String = row.get(1)?;
        let uid: String = row.get(2)?;
        let thread: String = row.get(3)?;
        let event: String = row.get(4)?;
        let ts: i64 = row.get(5)?;
        if current_room.as_deref() != Some(room.as_str()) {
            flush(current_room.take(), &mut contents, &mut out);
            current_room = Some(room);
        }
        let mut receipt = json!({ "ts": ts });
        if !thread.is_empty() {
            receipt["thread_id"] = Value::String(thread);
        }
        let by_type = contents
            .entry(event)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.entry(rtype).or_insert_with(|| json!({})));
        if let Some(Value::Object(users)) = by_type {
            users.insert(uid, receipt);
        }
    }
    flush(current_room, &mut contents, &mut out);
    Ok(out)
}

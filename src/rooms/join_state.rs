//! What a joining server gets back from `send_join` (server-server
//! "Joining Rooms", joins-v2.yaml) and a knocking one from `send_knock`.
//!
//! With `omit_members` (MSC3706, the partial-state "faster join") the
//! state leaves out `m.room.member` events, except the heroes' when the
//! room has neither a name nor a canonical alias (so the joiner can name
//! the room at once), and the auth chain leaves out events already in the
//! state; `servers_in_room` tells the joiner whom to ask for the rest.

use std::collections::{BTreeSet, HashSet};

use ruma::OwnedRoomId;
use serde_json::Value;

use crate::db::Pool;

use super::federation_read::{auth_chain, load, state_before};
use super::RoomError;

/// Heroes at most (client-server `/sync` "m.heroes").
const HEROES: usize = 5;

/// State types an invitee or knocker sees (spec "Stripped state").
const STRIPPED_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// The body parts of a `send_join` answer.
pub struct JoinState {
    pub state: Vec<Value>,
    pub auth_chain: Vec<Value>,
    /// The join event as stored.
    pub event: Value,
    pub servers_in_room: Vec<String>,
}

/// The state before the join `event_id` and the auth chains of it and of
/// that state; see the module doc for `omit_members`.
pub async fn join_state(
    db: &Pool,
    room: &OwnedRoomId,
    event_id: &str,
    omit_members: bool,
) -> Result<JoinState, RoomError> {
    let room_id = room.as_str();
    let state_ids = state_before(db, room_id, event_id).await?;
    let rows = db
        .query(
            "SELECT event_id, json->>'type', json->>'state_key', \
                    json->'content'->>'membership' FROM room_pdus \
             WHERE event_id = ANY($1) AND room_id = $2",
            &[&state_ids, &room_id],
        )
        .await?;
    let mut kept = Vec::with_capacity(rows.len());
    let mut members: Vec<(String, String)> = Vec::new();
    let mut named = false;
    for r in &rows {
        let id: String = r.get(0)?;
        let kind: Option<String> = r.get(1)?;
        let key: Option<String> = r.get(2)?;
        let membership: Option<String> = r.get(3)?;
        match kind.as_deref() {
            Some("m.room.member") if omit_members => {
                if matches!(membership.as_deref(), Some("join" | "invite")) {
                    members.push((key.unwrap_or_default(), id));
                }
                continue;
            }
            Some("m.room.name" | "m.room.canonical_alias") => named = true,
            _ => {}
        }
        kept.push(id);
    }
    if omit_members && !named {
        members.sort();
        kept.extend(members.into_iter().take(HEROES).map(|(_, id)| id));
    }
    let mut roots = kept.clone();
    roots.push(event_id.to_owned());
    let mut chain = auth_chain(db, room_id, &roots).await?;
    if omit_members {
        let in_state: HashSet<&String> = kept.iter().collect();
        chain.retain(|id| !in_state.contains(id));
    }
    let served = |ids: &[String]| {
        let ids = ids.to_vec();
        async move {
            load(db, Some(room_id), &ids)
                .await?
                .iter()
                .map(|e| e.served(true))
                .collect::<Result<Vec<_>, RoomError>>()
        }
    };
    let state = served(&kept).await?;
    let auth_chain = served(&chain).await?;
    let event = served(&[event_id.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| RoomError::Internal("the join event is not stored".into()))?;
    let joined = db
        .query(
            "SELECT state_key FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership = 'join'",
            &[&room_id],
        )
        .await?;
    let mut servers = BTreeSet::new();
    for r in &joined {
        if let Ok(u) = ruma::OwnedUserId::try_from(r.get::<String>(0)?) {
            servers.insert(u.server_name().to_string());
        }
    }
    Ok(JoinState {
        state,
        auth_chain,
        event,
        servers_in_room: servers.into_iter().collect(),
    })
}

/// `knock_room_state` / `invite_room_state`: the room's identifying state
/// now, as full PDUs (server-server "Inviting to a room" v2 and "Knocking",
/// since v1.16: the create event included, every entry formatted as the
/// room version says; the receiving server strips them for its clients).
pub async fn stripped_state(db: &Pool, room: &OwnedRoomId) -> Result<Vec<Value>, RoomError> {
    let types: Vec<String> = STRIPPED_TYPES.iter().map(|t| (*t).to_owned()).collect();
    let rows = db
        .query(
            "SELECT p.json FROM current_state c JOIN room_pdus p USING (event_id) \
             WHERE c.room_id = $1 AND c.type = ANY($2) AND c.state_key = ''",
            &[&room.as_str(), &types],
        )
        .await?;
    rows.iter().map(|r| Ok(r.get::<Value>(0)?)).collect()
}

//! Joining a room hosted elsewhere (server-server "Joining Rooms", the
//! joining side): `make_join` on each candidate server in turn (offering
//! every room version we understand), our join signed, `send_join` v2,
//! every event of the answer checked (signatures and content hashes in
//! bulk on the blocking pool), then stored on the room's owner shard
//! (`Rooms::persist_remote_join`).
//!
//! We always ask for a partial-state join (`omit_members=true`, MSC3706):
//! an answer with `members_omitted` makes the room partial
//! (`rooms::partial`) and the background resync (`federation::resync`)
//! fetches the rest; a resident server that ignores the flag answers the
//! full state, stored as before. An answer with any event failing its
//! signatures or hash, or whose auth chain does not hold, is refused
//! whole (the next server is tried): a join on state we cannot trust
//! would leave a half-joined room.

use std::rc::Rc;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::events::{event_id_of, hash_and_sign, RoomVersion};
use crate::rooms::{client, RoomError};
use crate::shard_state::ShardState;

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn object(v: Value) -> Option<CanonicalJsonObject> {
    match serde_json::from_value::<CanonicalJsonValue>(v) {
        Ok(CanonicalJsonValue::Object(o)) => Some(o),
        _ => None,
    }
}

/// Joins `user` to `room` through the first of `servers` that lets us.
pub async fn join_remote(
    state: &Rc<ShardState>,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    servers: &[String],
) -> Result<OwnedEventId, RoomError> {
    let ours = state.key.server_name.as_str();
    let mut last = RoomError::NotFound(format!("No server to join {room} through"));
    for server in servers.iter().filter(|s| s.as_str() != ours) {
        match join_via(state, user, room, server).await {
            Ok(id) => {
                // An invite it accepted is no longer pending.
                state
                    .db
                    .execute(
                        "DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2",
                        &[&room.as_str(), &user.as_str()],
                    )
                    .await?;
                return Ok(id);
            }
            Err(e) => {
                tracing::info!(%room, %server, error = %e, "remote join failed; trying the next server");
                last = e;
            }
        }
    }
    Err(last)
}

async fn join_via(
    state: &Rc<ShardState>,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    server: &str,
) -> Result<OwnedEventId, RoomError> {
    let remote = |what: &str, e: &dyn std::fmt::Display| {
        RoomError::Forbidden(format!("{what} at {server} failed: {e}"))
    };
    let vers: Vec<String> = RoomVersion::UNDERSTOOD
        .iter()
        .map(|v| format!("ver={}", v.as_str()))
        .collect();
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?{}",
        enc(room.as_str()),
        enc(user.as_str()),
        vers.join("&")
    );
    let made: Value = state
        .federation
        .request_json(server, "GET", &path, None)
        .await
        .map_err(|e| remote("make_join", &e))?;
    let (version, mut template) =
        check_make_join(&made, user, room).map_err(|e| remote("make_join", &e))?;
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), "join".to_owned().into());
    if let Some(CanonicalJsonValue::Object(c)) = template.get("content") {
        if let Some(via) = c.get("join_authorised_via_users_server") {
            content.insert("join_authorised_via_users_server".into(), via.clone());
        }
    }
    crate::rooms::member_profile::fill(&state.db, user.as_str(), &mut content).await?;
    template.insert("content".into(), CanonicalJsonValue::Object(content));
    template.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(crate::primitives::unix_ms()).unwrap_or_default(),
        ),
    );
    template.remove("signatures");
    template.remove("hashes");
    template.remove("unsigned");
    hash_and_sign(&mut template, version, &state.key)
        .map_err(|e| RoomError::Internal(format!("signing our join: {e}")))?;
    let join_id = event_id_of(&template, version).map_err(|e| remote("make_join", &e))?;
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}?omit_members=true",
        enc(room.as_str()),
        enc(join_id.as_str())
    );
    let body = serde_json::to_value(&template).map_err(|e| RoomError::Internal(e.to_string()))?;
    let answer: Value = state
        .federation
        .request_json(server, "PUT", &path, Some(&body))
        .await
        .map_err(|e| remote("send_join", &e))?;
    let SendJoinAnswer {
        join,
        state_ids,
        events: all,
        partial,
    } = read_send_join(
        &answer,
        version,
        &join_id,
        template,
        server,
        state.key.server_name.as_str(),
    )
    .map_err(|e| remote("send_join", &e))?;
    let mut verified = Vec::with_capacity(all.len());
    // A content hash mismatch comes back redacted (as the spec says for
    // received PDUs); in a state we would join on, it is a forgery.
    let sent: Vec<CanonicalJsonObject> = all.iter().map(|(_, e)| e.clone()).collect();
    let checked = super::inbound::verify_pdus(state, version, all).await?;
    for ((id, outcome), original) in checked.into_iter().zip(sent) {
        match outcome {
            Ok(p) if p == original => verified.push((id, p)),
            Ok(_) => {
                return Err(remote(
                    "send_join",
                    &format!("the answer's event {id} does not match its content hash"),
                ))
            }
            Err(e) => {
                return Err(remote(
                    "send_join",
                    &format!("the answer's event {id} is not genuine: {e}"),
                ))
            }
        }
    }
    let joined = client::persist_remote_join(
        &state.mesh,
        room.clone(),
        version,
        verified,
        state_ids,
        (join_id, join),
        partial.clone(),
    )
    .await?;
    if let Some(servers) = partial {
        tracing::info!(%room, via = %server, ?servers, "joined with partial state; resyncing");
        super::resync::kick_owner(state, room.clone()).await;
    }
    Ok(joined)
}

/// Checks a `make_join` answer: the room version (absent means "1", which
/// we do not support) and that the template is our join to this room.
/// Public (hidden) for the `federation_response` fuzz target: a resident
/// server can answer anything.
#[doc(hidden)]
pub fn check_make_join(
    made: &Value,
    user: &UserId,
    room: &RoomId,
) -> Result<(RoomVersion, CanonicalJsonObject), String> {
    let version = made
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1");
    let version = RoomVersion::parse(version).map_err(|e| e.to_string())?;
    let template = made
        .get("event")
        .cloned()
        .and_then(object)
        .ok_or("no event template")?;
    // What the resident server proposes must be our join to this room.
    let is =
        |k: &str, v: &str| matches!(template.get(k), Some(CanonicalJsonValue::String(s)) if s == v);
    if !is("type", "m.room.member")
        || !is("state_key", user.as_str())
        || !is("sender", user.as_str())
        || !is("room_id", room.as_str())
    {
        return Err("the template is not our join".into());
    }
    Ok((version, template))
}

/// What a `send_join` answer brings, before any signature is checked.
#[doc(hidden)]
#[derive(Debug)]
pub struct SendJoinAnswer {
    /// Our join, as the resident server co-signed it (restricted rooms)
    /// or as we sent it.
    pub join: CanonicalJsonObject,
    /// The ids of the room state before our join.
    pub state_ids: Vec<OwnedEventId>,
    /// The state, then the auth chain events not in it, with their ids.
    pub events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    /// With `members_omitted`: the servers to resync from.
    pub partial: Option<Vec<String>>,
}

/// Reads a `send_join` v2 answer: our join (the answer's copy only if it
/// is the same event), the state and the auth chain with their event ids
/// (an event whose id cannot be computed refuses the whole answer).
/// Public (hidden) for the `federation_response` fuzz target.
#[doc(hidden)]
pub fn read_send_join(
    answer: &Value,
    version: RoomVersion,
    join_id: &OwnedEventId,
    template: CanonicalJsonObject,
    via: &str,
    ours: &str,
) -> Result<SendJoinAnswer, String> {
    // A restricted room's resident server adds its signature to our join.
    let join = answer
        .get("event")
        .cloned()
        .and_then(object)
        .filter(|e| event_id_of(e, version).ok().as_ref() == Some(join_id))
        .unwrap_or(template);
    let list = |k: &str| -> Vec<CanonicalJsonObject> {
        answer
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().cloned().filter_map(object).collect())
            .unwrap_or_default()
    };
    let state_events = list("state");
    let auth_chain = list("auth_chain");
    let partial = (answer.get("members_omitted").and_then(Value::as_bool) == Some(true))
        .then(|| servers_in_room(answer, via, ours));
    let mut state_ids = Vec::with_capacity(state_events.len());
    let mut events = Vec::with_capacity(state_events.len() + auth_chain.len());
    for e in state_events {
        let id = event_id_of(&e, version).map_err(|e| e.to_string())?;
        state_ids.push(id.clone());
        events.push((id, e));
    }
    let in_state: std::collections::HashSet<OwnedEventId> = state_ids.iter().cloned().collect();
    for e in auth_chain {
        let id = event_id_of(&e, version).map_err(|e| e.to_string())?;
        if !in_state.contains(&id) {
            events.push((id, e));
        }
    }
    Ok(SendJoinAnswer {
        join,
        state_ids,
        events,
        partial,
    })
}

/// Whom to ask for the rest of a partial room's state (and to send our
/// events to meanwhile): the answer's `servers_in_room`, the server that
/// answered first, never ourselves.
fn servers_in_room(answer: &Value, via: &str, ours: &str) -> Vec<String> {
    let mut out = vec![via.to_owned()];
    for s in answer
        .get("servers_in_room")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if s != ours && !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

/// Where to join `room` through, besides what the client named: the
/// server of the room id (before v12 ids name one) and the senders of
/// invites our `user` got to it (accepting a remote invite joins via the
/// inviting server). `None` if a user of ours is joined already (a local
/// join is enough).
pub async fn candidates(
    state: &ShardState,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    mut named: Vec<String>,
) -> Result<Option<Vec<String>>, RoomError> {
    let ours = state.key.server_name.as_str();
    let rows = state
        .db
        .query(
            "SELECT state_key FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership = 'join'",
            &[&room.as_str()],
        )
        .await?;
    for r in &rows {
        if let Ok(u) = OwnedUserId::try_from(r.get::<String>(0)?) {
            if u.server_name().as_str() == ours {
                return Ok(None);
            }
        }
    }
    let invites = state
        .db
        .query(
            "SELECT event->>'sender' FROM remote_invites WHERE room_id = $1 AND user_id = $2",
            &[&room.as_str(), &user.as_str()],
        )
        .await?;
    for r in &invites {
        if let Some(s) = r.get::<Option<String>>(0)? {
            if let Ok(u) = OwnedUserId::try_from(s) {
                named.push(u.server_name().to_string());
            }
        }
    }
    if let Some(s) = room.server_name() {
        named.push(s.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    named.retain(|s| s != ours && seen.insert(s.clone()));
    Ok(Some(named))
}

/// A remote alias through its server's `/query/directory`: the room and
/// the servers to join it through.
pub async fn resolve_alias(
    state: &ShardState,
    alias: &ruma::OwnedRoomAliasId,
) -> Result<(OwnedRoomId, Vec<String>), RoomError> {
    let server = alias.server_name().to_string();
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc(alias.as_str())
    );
    let v: Value = state
        .federation
        .request_json(&server, "GET", &path, None)
        .await
        .map_err(|e| RoomError::NotFound(format!("Room alias {alias} not found: {e}")))?;
    let room = v
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or_else(|| RoomError::NotFound(format!("Room alias {alias} not found")))?;
    let mut servers: Vec<String> = v
        .get("servers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    servers.insert(0, server);
    Ok((room, servers))
}

/// Rejecting an invite to a room hosted elsewhere (server-server "Leaving
/// Rooms (Rejecting Invites)"): `make_leave` / `send_leave` v2 through the
/// inviting server, then the kept invite is marked left (the next `/sync`
/// lists the room in `rooms.leave`). If that server cannot take the leave,
/// the invite is rejected here only (`invites::local_leave`), as Synapse
/// does. `Ok(false)`: no remote invite of `user` to `room` is pending (a
/// local leave applies).
pub async fn reject_remote_invite(
    state: &Rc<ShardState>,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    reason: Option<String>,
) -> Result<bool, RoomError> {
    let Some((inviter, kept_version, invite)) = super::invites::pending(state, user, room).await?
    else {
        return Ok(false);
    };
    let joined_here = candidates(state, user, room, Vec::new()).await?.is_none();
    if joined_here {
        apply_kept_invite(state, user, room).await?;
        return Ok(false);
    }
    let server = inviter
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .map(|u| u.server_name().to_string())
        .ok_or_else(|| RoomError::Internal("kept invite without a sender".into()))?;
    let (id, leave) = match leave_via(state, user, room, &server, &kept_version, reason).await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(%room, %server, error = %e, "remote rejection failed; rejecting locally");
            let version = RoomVersion::parse(&kept_version)
                .map_err(|e| RoomError::Internal(format!("kept invite: {e}")))?;
            super::invites::local_leave(state, user, room, version, &invite)?
        }
    };
    super::invites::mark_left(state, room, user, &id, leave).await?;
    Ok(true)
}

/// `make_leave` / `send_leave` v2 at `server`: our signed leave, accepted.
async fn leave_via(
    state: &Rc<ShardState>,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    server: &str,
    kept_version: &str,
    reason: Option<String>,
) -> Result<(OwnedEventId, Value), RoomError> {
    let remote = |what: &str, e: &dyn std::fmt::Display| {
        RoomError::Forbidden(format!("{what} at {server} failed: {e}"))
    };
    let path = format!(
        "/_matrix/federation/v1/make_leave/{}/{}",
        enc(room.as_str()),
        enc(user.as_str())
    );
    let made: Value = state
        .federation
        .request_json(server, "GET", &path, None)
        .await
        .map_err(|e| remote("make_leave", &e))?;
    let version = made
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or(kept_version);
    let version = RoomVersion::parse(version).map_err(|e| remote("make_leave", &e))?;
    let mut template = made
        .get("event")
        .cloned()
        .and_then(object)
        .ok_or_else(|| remote("make_leave", &"no event template"))?;
    let is =
        |k: &str, v: &str| matches!(template.get(k), Some(CanonicalJsonValue::String(s)) if s == v);
    if !is("type", "m.room.member")
        || !is("state_key", user.as_str())
        || !is("sender", user.as_str())
    {
        return Err(remote("make_leave", &"the template is not our leave"));
    }
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".into(), "leave".to_owned().into());
    if let Some(r) = reason {
        content.insert("reason".into(), r.into());
    }
    template.insert("content".into(), CanonicalJsonValue::Object(content));
    template.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(crate::primitives::unix_ms()).unwrap_or_default(),
        ),
    );
    template.remove("signatures");
    template.remove("hashes");
    template.remove("unsigned");
    hash_and_sign(&mut template, version, &state.key)
        .map_err(|e| RoomError::Internal(format!("signing our leave: {e}")))?;
    let id = event_id_of(&template, version).map_err(|e| remote("make_leave", &e))?;
    let path = format!(
        "/_matrix/federation/v2/send_leave/{}/{}",
        enc(room.as_str()),
        enc(id.as_str())
    );
    let body = serde_json::to_value(&template).map_err(|e| RoomError::Internal(e.to_string()))?;
    state
        .federation
        .request_json::<Value>(server, "PUT", &path, Some(&body))
        .await
        .map_err(|e| remote("send_leave", &e))?;
    Ok((id, body))
}

/// When a user of ours is in the room already, a kept invite is an event
/// of a room we have: it is applied (it may not have arrived through
/// `/send` yet), so the local join or leave that answers it is allowed.
pub async fn apply_kept_invite(
    state: &Rc<ShardState>,
    user: &OwnedUserId,
    room: &OwnedRoomId,
) -> Result<(), RoomError> {
    let rows = state
        .db
        .query(
            "SELECT event FROM remote_invites WHERE room_id = $1 AND user_id = $2 \
             AND membership = 'invite'",
            &[&room.as_str(), &user.as_str()],
        )
        .await?;
    for r in &rows {
        let Some(pdu) = object(r.get::<Value>(0)?) else {
            continue;
        };
        let received = crate::rooms::receive::Received {
            checked: true,
            ..crate::rooms::receive::Received::new(room.clone(), pdu)
        };
        match client::apply_pdu(&state.mesh, received).await {
            Ok(outcome) => tracing::debug!(%room, ?outcome, "applied a kept invite"),
            Err(e) => tracing::info!(%room, error = %e, "a kept invite could not be applied"),
        }
    }
    state
        .db
        .execute(
            "DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2",
            &[&room.as_str(), &user.as_str()],
        )
        .await?;
    Ok(())
}

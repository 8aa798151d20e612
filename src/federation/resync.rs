//! The background resync of a partial-state room (MSC3902 "faster
//! joins", joining side): on the room's owner shard, the full state before
//! our join from one of `servers_in_room` — its `/state_ids?event_id=<join>`
//! (server-server "Retrieving events"), the events we lack fetched with
//! `/event` ([`FETCH_CONCURRENCY`] in flight), verified in bulk on the
//! blocking pool, stored as outliers through the entry point (each checked
//! against its own auth events) — then `Rooms::complete_partial_state`
//! stores it and drops the partial mark.
//!
//! A server failing (an error, a timeout, an answer that does not hold)
//! is left for the next of `servers_in_room`; after a round of failures
//! the resync waits (doubling up to [`MAX_BACKOFF`]) and starts again. A
//! restart resumes every room still marked ([`resume`]).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::canonical_json::{self, CanonicalJsonObject};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::Value;

use crate::events::{event_id_of, RoomVersion};
use crate::rooms::state::StateMap;
use crate::rooms::{graph, partial, RoomError};
use crate::shard_state::{on_shard, Here, ShardState};

/// `/event` fetches in flight at once.
const FETCH_CONCURRENCY: usize = 16;
/// The state of a room we fetch, at most (events; refused above).
const MAX_STATE: usize = 200_000;
/// The first wait after every server failed, then doubled.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

thread_local! {
    /// Rooms with a running resync on this shard.
    static ACTIVE: RefCell<HashSet<OwnedRoomId>> = RefCell::new(HashSet::new());
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Starts `room`'s resync on its owner shard (returns once told).
pub async fn kick_owner(state: &ShardState, room: OwnedRoomId) {
    let owner = state.rooms.owner(&room);
    let res = on_shard(&state.mesh, owner, Here::Inline, move |s| async move {
        start(&s, room);
    })
    .await;
    if let Err(e) = res {
        // The row stays; the owner's restart resumes it.
        tracing::warn!(error = %e, "cannot reach a room's owner shard to resync it");
    }
}

/// Starts the resync of `room` here unless one runs.
pub fn start(state: &Rc<ShardState>, room: OwnedRoomId) {
    if ACTIVE.with(|a| a.borrow_mut().insert(room.clone())) {
        monoio::spawn(run(state.clone(), room));
    }
}

/// At start: the partial rooms of this shard, marked and resynced.
pub async fn resume(state: &Rc<ShardState>) -> Result<usize, RoomError> {
    let me = state.info.id;
    let rooms = partial::load_owned(&state.db, |r| state.rooms.owner(r) == me).await?;
    for room in &rooms {
        tracing::info!(%room, "resuming the resync of a partial-state room");
        start(state, room.clone());
    }
    Ok(rooms.len())
}

async fn run(state: Rc<ShardState>, room: OwnedRoomId) {
    let started = std::time::Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match round(&state, &room).await {
            Ok(true) => {
                tracing::info!(%room, ms = started.elapsed().as_millis() as u64,
                    "partial-state room resynced: full state stored");
                break;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%room, error = %e, "resync round failed"),
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    ACTIVE.with(|a| a.borrow_mut().remove(&room));
}

/// One try through every server of the room. `Ok(true)`: done (or the
/// room is no longer partial).
async fn round(state: &Rc<ShardState>, room: &OwnedRoomId) -> Result<bool, RoomError> {
    let Some(row) = partial::load(&state.db, room).await? else {
        partial::unmark(room);
        return Ok(true);
    };
    let known = graph::placed(&state.db, &[row.join_event_id.to_string()]).await?;
    if known
        .get(row.join_event_id.as_str())
        .and_then(|p| p.snapshot)
        .is_none()
    {
        // A crash between the mark and our join's commit: no join here.
        tracing::info!(%room, "partial mark without our join; dropped");
        state
            .db
            .execute(
                "DELETE FROM partial_state_rooms WHERE room_id = $1",
                &[&room.as_str()],
            )
            .await?;
        partial::unmark(room);
        return Ok(true);
    }
    let version = state.rooms.head(room).await?.version;
    let ours = state.key.server_name.as_str();
    for server in row.servers.iter().filter(|s| s.as_str() != ours) {
        match from_server(state, room, version, &row.join_event_id, server).await {
            Ok(full) => {
                let added = state.rooms.complete_partial_state(room, full).await?;
                tracing::info!(%room, %server, added, "full state of a partial room stored");
                return Ok(true);
            }
            Err(e) if matches!(e, RoomError::Db(_) | RoomError::Mesh(_)) => return Err(e),
            Err(e) => {
                tracing::info!(%room, %server, error = %e, "resync from this server failed; next")
            }
        }
    }
    Ok(false)
}

#[derive(Deserialize)]
struct StateIds {
    #[serde(default)]
    pdu_ids: Vec<String>,
    #[serde(default)]
    auth_chain_ids: Vec<String>,
}

#[derive(Deserialize)]
struct EventResponse {
    #[serde(default)]
    pdus: Vec<Value>,
}

/// The full state before our join as `server` has it, every event stored.
async fn from_server(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    join: &OwnedEventId,
    server: &str,
) -> Result<StateMap, RoomError> {
    let bad = |what: String| RoomError::BadRequest(format!("{server}: {what}"));
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(room.as_str()),
        enc(join.as_str())
    );
    let ids: StateIds = state
        .federation
        .request_json(server, "GET", &path, None)
        .await
        .map_err(|e| bad(format!("state_ids: {e}")))?;
    let mut wanted: Vec<String> = ids.auth_chain_ids;
    wanted.extend(ids.pdu_ids.iter().cloned());
    let wanted: Vec<String> = wanted
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.len() > MAX_STATE {
        return Err(bad(format!(
            "{} state events, over {MAX_STATE}",
            wanted.len()
        )));
    }
    let known = graph::placed(&state.db, &wanted).await?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|id| !known.contains_key(id))
        .collect();
    tracing::info!(%room, %server, state = ids.pdu_ids.len(), missing = missing.len(),
        "resyncing a partial-state room");
    // A window of FETCH_CONCURRENCY requests always in flight (not chunks
    // waiting for their slowest).
    let fetched: Vec<Value> =
        futures_util::stream::iter(missing.iter().map(|id| fetch_event(state, server, id)))
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(bad)?;
    // Every event is checked before any is stored: a server that forges
    // one is left for the next.
    let mut pdus = Vec::with_capacity(fetched.len());
    for v in fetched {
        let Value::Object(m) = v else {
            return Err(bad("an event is not an object".into()));
        };
        let p = canonical_json::try_from_json_map(m).map_err(|e| bad(e.to_string()))?;
        let id = event_id_of(&p, version).map_err(|e| bad(e.to_string()))?;
        if !missing.iter().any(|m| m == id.as_str()) {
            return Err(bad(format!("answered {id}, which was not asked for")));
        }
        pdus.push((id, p));
    }
    let mut ok: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::with_capacity(pdus.len());
    let sent: Vec<CanonicalJsonObject> = pdus.iter().map(|(_, p)| p.clone()).collect();
    let checked = super::inbound::verify_pdus(state, version, pdus).await?;
    for ((id, outcome), original) in checked.into_iter().zip(sent) {
        let p = outcome.map_err(|e| bad(format!("event {id} is not genuine: {e}")))?;
        if p != original {
            return Err(bad(format!("event {id} does not match its content hash")));
        }
        ok.push((id, p));
    }
    // Refused whole if one fails its own auth events (`bad`: the next
    // server is asked).
    state
        .rooms
        .store_resync_outliers(room, version, ok)
        .await
        .map_err(|e| match e {
            RoomError::Db(_) | RoomError::Mesh(_) => e,
            e => bad(e.to_string()),
        })?;
    let mut full = StateMap::new();
    for id in ids.pdu_ids {
        let Ok(id) = OwnedEventId::try_from(id) else {
            continue;
        };
        if let Some(p) = state.rooms.event(&id).await? {
            if let (Some(k), true) = (&p.state_key, p.room_id == *room) {
                full.insert((p.kind.to_string(), k.clone()), id.to_string());
            }
        }
    }
    if !full.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err(bad("its state has no create event".into()));
    }
    Ok(full)
}

/// One event from `server`'s `/event/{id}` (its `pdus[0]`).
async fn fetch_event(state: &ShardState, server: &str, id: &str) -> Result<Value, String> {
    let path = format!("/_matrix/federation/v1/event/{}", enc(id));
    let r = state
        .federation
        .request_json::<EventResponse>(server, "GET", &path, None)
        .await
        .map_err(|e| format!("event {id}: {e}"))?;
    r.pdus
        .into_iter()
        .next()
        .ok_or_else(|| format!("event {id}: no pdu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("!a:b"), "%21a%3Ab");
    }
}

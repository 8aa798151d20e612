//! The background resync of a partial-state room (MSC3902 "faster
//! joins", joining side): on the room's owner shard, the full state before
//! our join from one of `servers_in_room` — its `/state_ids?event_id=<join>`
//! (server-server "Retrieving events"), the events we lack fetched with
//! one `/state` when many are missing ([`STATE_ENDPOINT_MIN`]) and `/event`
//! for the rest ([`FETCH_CONCURRENCY`] in flight), verified in bulk on the
//! blocking pool, stored as outliers in one transaction (each checked
//! against its own auth events) — then `Rooms::complete_partial_state`
//! stores it, re-checks the events received meanwhile on it, and drops the
//! partial mark.
//!
//! A server failing (an error, a timeout, an answer that does not hold)
//! is left for the next of `servers_in_room`; after a round of failures
//! the resync waits (doubling up to [`MAX_BACKOFF`]) and starts again. A
//! restart resumes every room still marked ([`resume`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::canonical_json::{self, CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::Value;

use crate::events::{event_id_of, RoomVersion};
use crate::rooms::state::StateMap;
use crate::rooms::{graph, partial, RoomError};
use crate::shard_state::{on_shard, Here, ShardState};

/// `/event` fetches in flight at once.
const FETCH_CONCURRENCY: usize = 16;
/// Missing at least this many events, and at least a tenth of the state
/// and auth chain, the resync asks `/state` (every PDU in one answer)
/// before `/event` for what it lacks: a 10,000-member room is then one
/// request, not 10,000 (Synapse also fetches the whole state when much is
/// missing). Fewer: `/event` for each, which moves less.
const STATE_ENDPOINT_MIN: usize = 100;
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
                let done = state
                    .rooms
                    .complete_partial_state(room, &row.join_event_id, full)
                    .await?;
                tracing::info!(%room, %server, added = done.added, rechecked = done.rechecked,
                    rejected = done.rejected.len(), "full state of a partial room stored");
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
    let wanted_len = wanted.len();
    let known = graph::placed(&state.db, &wanted).await?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|id| !known.contains_key(id))
        .collect();
    tracing::info!(%room, %server, state = ids.pdu_ids.len(), missing = missing.len(),
        "resyncing a partial-state room");
    let asked: HashSet<&str> = missing.iter().map(String::as_str).collect();
    // Many missing (a partial join's members): the whole state in one
    // `/state` answer rather than one `/event` per event.
    let mut pdus: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::new();
    let mut rest: Vec<&str> = asked.iter().copied().collect();
    if missing.len() >= STATE_ENDPOINT_MIN && missing.len() * 10 >= wanted_len {
        match whole_state(state, server, room, join, version, &asked).await {
            Ok(got) => {
                let have: HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
                rest.retain(|id| !have.contains(id));
                tracing::info!(%room, %server, got = got.len(), rest = rest.len(),
                    "the state of a partial room from /state");
                pdus = got;
            }
            Err(e) => {
                tracing::info!(%room, %server, error = %e, "/state failed; fetching by /event")
            }
        }
    }
    // A window of FETCH_CONCURRENCY requests always in flight (not chunks
    // waiting for their slowest).
    let fetched: Vec<Value> =
        futures_util::stream::iter(rest.iter().map(|id| fetch_event(state, server, id)))
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(bad)?;
    // Every event is checked before any is stored: a server that forges
    // one is left for the next.
    for v in fetched {
        let Value::Object(m) = v else {
            return Err(bad("an event is not an object".into()));
        };
        let p = canonical_json::try_from_json_map(m).map_err(|e| bad(e.to_string()))?;
        let id = event_id_of(&p, version).map_err(|e| bad(e.to_string()))?;
        if !asked.contains(id.as_str()) {
            return Err(bad(format!("answered {id}, which was not asked for")));
        }
        pdus.push((id, p));
    }
    let mut ok: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::with_capacity(pdus.len());
    let sent: Vec<CanonicalJsonObject> = pdus.iter().map(|(_, p)| p.clone()).collect();
    let checked = super::inbound::verify_pdus(state, version, pdus).await?;
    // The state keys of what was fetched, for the final map.
    let mut keys: HashMap<String, (String, String)> = HashMap::new();
    for ((id, outcome), original) in checked.into_iter().zip(sent) {
        let p = outcome.map_err(|e| bad(format!("event {id} is not genuine: {e}")))?;
        if p != original {
            return Err(bad(format!("event {id} does not match its content hash")));
        }
        if let (Some(CanonicalJsonValue::String(t)), Some(CanonicalJsonValue::String(k))) =
            (p.get("type"), p.get("state_key"))
        {
            keys.insert(id.to_string(), (t.clone(), k.clone()));
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
    // The final map: what was fetched, plus one read of the state keys of
    // what we had (not one read per state event: ~20,000 in the benchmark).
    let had: Vec<String> = ids
        .pdu_ids
        .iter()
        .filter(|id| !keys.contains_key(*id))
        .cloned()
        .collect();
    keys.extend(graph::state_keys(&state.db, room, &had).await?);
    let mut full = StateMap::new();
    for id in ids.pdu_ids {
        if let Some(k) = keys.remove(&id) {
            full.insert(k, id);
        }
    }
    if !full.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err(bad("its state has no create event".into()));
    }
    Ok(full)
}

/// The events among `asked` of `server`'s `/state?event_id=<join>` (the
/// state and auth chain at once; server-server "Retrieving events"),
/// parsed and identified on the blocking pool (~20,000 events). Events it
/// lacks or cannot parse are left for `/event`.
async fn whole_state(
    state: &ShardState,
    server: &str,
    room: &OwnedRoomId,
    join: &OwnedEventId,
    version: RoomVersion,
    asked: &HashSet<&str>,
) -> Result<Vec<(OwnedEventId, CanonicalJsonObject)>, String> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        pdus: Vec<Value>,
        #[serde(default)]
        auth_chain: Vec<Value>,
    }
    let path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        enc(room.as_str()),
        enc(join.as_str())
    );
    let resp = state
        .federation
        .request(server, "GET", &path, None)
        .await
        .map_err(|e| format!("state: {e}"))?;
    if resp.status != 200 {
        return Err(format!("state: status {}", resp.status));
    }
    let mut wanted: HashSet<String> = asked.iter().map(|s| s.to_string()).collect();
    let body = resp.body;
    crate::blocking::run(move || -> Result<Vec<_>, String> {
        let a: Answer = serde_json::from_slice(&body).map_err(|e| format!("state: {e}"))?;
        let mut out = Vec::with_capacity(wanted.len());
        for v in a.pdus.into_iter().chain(a.auth_chain) {
            let Value::Object(m) = v else { continue };
            let Ok(p) = canonical_json::try_from_json_map(m) else {
                continue;
            };
            let Ok(id) = event_id_of(&p, version) else {
                continue;
            };
            if wanted.remove(id.as_str()) {
                out.push((id, p));
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("state: {e}"))?
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

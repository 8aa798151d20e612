//! Applying staged PDUs (`federation_staging`, filled by
//! `federation::inbound`) on each room's owner shard, one room at a time,
//! in arrival order.
//!
//! One worker task per room with staged rows: kicked when a transaction
//! stages for the room, and at start for rows a crash left behind
//! ([`resume`]). It applies each PDU through the rooms' one entry point
//! (`Rooms::apply_pdu`) and deletes its row only after: a crash in between
//! applies it again, which the entry point answers "already known".
//!
//! What a PDU lacks is fetched from its origin, bounded, without holding
//! the room's write path (the room lock is only taken inside each apply):
//! - unknown auth events: its `/event_auth` chain, stored as outliers;
//! - unknown prev events: `/get_missing_events` back to our forward
//!   extremities (at most [`MISSING_EVENTS_LIMIT`]), applied oldest first;
//! - a gap that remains: the state after each missing prev event from
//!   `/state_ids` plus `/event` for the events we lack (at most
//!   [`MAX_STATE_FETCH`]); the PDU is placed on those states and the gap
//!   stays in the graph (server-server "Retrieving events").

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::canonical_json::{self, CanonicalJsonObject};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::events::{event_id_of, RoomVersion};
use crate::rooms::graph;
use crate::rooms::receive::{Applied, Received};
use crate::rooms::state::StateMap;
use crate::rooms::RoomError;
use crate::shard_state::{on_shard, Here, ShardState};

/// Staged rows a worker reads at once.
const BATCH: i64 = 20;
/// `/get_missing_events` asks for at most this many events.
pub const MISSING_EVENTS_LIMIT: usize = 10;
/// Missing prev events filled from `/state_ids` per PDU, at most.
const MAX_STATE_GAPS: usize = 3;
/// Events fetched one by one for one missing state, at most.
const MAX_STATE_FETCH: usize = 2_000;
/// `/event` fetches in flight at once.
const FETCH_CONCURRENCY: usize = 8;
/// A worker whose database is unavailable waits this long, then retries.
const RETRY_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// Rooms with a running worker on this shard; `true`: kicked again
    /// while it ran (look once more before stopping).
    static ACTIVE: RefCell<HashMap<OwnedRoomId, bool>> = RefCell::new(HashMap::new());
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Makes `room`'s owner shard look at its staged PDUs (returns once the
/// owner has been told, not when they are applied).
pub async fn kick_owner(state: &ShardState, room: OwnedRoomId) {
    let owner = state.rooms.owner(&room);
    let res = on_shard(&state.mesh, owner, Here::Inline, move |s| async move {
        kick(&s, room);
    })
    .await;
    if let Err(e) = res {
        // The rows stay staged; the owner's next kick or restart takes them.
        tracing::warn!(error = %e, "cannot reach a room's owner shard for staged PDUs");
    }
}

/// Starts (or re-arms) this shard's worker for `room`.
pub fn kick(state: &Rc<ShardState>, room: OwnedRoomId) {
    let start = ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        match a.get_mut(&room) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                a.insert(room.clone(), false);
                true
            }
        }
    });
    if start {
        monoio::spawn(run(state.clone(), room));
    }
}

/// At start: a worker for every room of this shard with staged PDUs.
pub async fn resume(state: &Rc<ShardState>) -> Result<usize, RoomError> {
    let rows = state
        .db
        .query("SELECT DISTINCT room_id FROM federation_staging", &[])
        .await?;
    let mut n = 0;
    for r in rows {
        let room: String = r.get(0)?;
        let Ok(room) = OwnedRoomId::try_from(room) else {
            continue;
        };
        if state.rooms.owner(&room) == state.info.id {
            kick(state, room);
            n += 1;
        }
    }
    Ok(n)
}

/// Whether the worker may stop (nothing kicked it meanwhile).
fn finish(room: &OwnedRoomId) -> bool {
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        match a.get_mut(room) {
            Some(again) if *again => {
                *again = false;
                false
            }
            _ => {
                a.remove(room);
                true
            }
        }
    })
}

async fn run(state: Rc<ShardState>, room: OwnedRoomId) {
    loop {
        match drain_once(&state, &room).await {
            Ok(0) => {
                if finish(&room) {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Database or mesh trouble: the rows stay; try again later.
                tracing::warn!(%room, error = %e, "applying staged PDUs failed; retrying");
                monoio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Applies up to [`BATCH`] staged PDUs of `room`; returns how many.
async fn drain_once(state: &Rc<ShardState>, room: &OwnedRoomId) -> Result<usize, RoomError> {
    let rows = state
        .db
        .query(
            "SELECT seq, origin, pdu FROM federation_staging WHERE room_id = $1 \
             ORDER BY seq LIMIT $2",
            &[&room.as_str(), &BATCH],
        )
        .await?;
    let n = rows.len();
    // Rows applied so far, deleted in one statement per batch (a crash
    // before it re-applies them: "already known").
    let mut done: Vec<i64> = Vec::with_capacity(n);
    for r in rows {
        let seq: i64 = r.get(0)?;
        let origin: String = r.get(1)?;
        let text: String = r.get(2)?;
        match serde_json::from_str::<CanonicalJsonObject>(&text) {
            Ok(pdu) => match process(state, room, &origin, pdu).await {
                Ok(()) => {}
                Err(e) if is_transient(&e) => {
                    delete_staged(state, &done).await?;
                    return Err(e);
                }
                Err(e) => tracing::info!(%room, %origin, error = %e, "dropped a staged PDU"),
            },
            Err(e) => tracing::warn!(%room, error = %e, "unreadable staged PDU dropped"),
        }
        done.push(seq);
    }
    delete_staged(state, &done).await?;
    Ok(n)
}

async fn delete_staged(state: &ShardState, seqs: &[i64]) -> Result<(), RoomError> {
    if !seqs.is_empty() {
        state
            .db
            .execute(
                "DELETE FROM federation_staging WHERE seq = ANY($1)",
                &[&seqs.to_vec()],
            )
            .await?;
    }
    Ok(())
}

fn is_transient(e: &RoomError) -> bool {
    matches!(e, RoomError::Db(_) | RoomError::Mesh(_))
}

async fn apply(
    state: &ShardState,
    room: &OwnedRoomId,
    pdu: CanonicalJsonObject,
    outlier: bool,
    prev_states: Vec<StateMap>,
) -> Result<Applied, RoomError> {
    state
        .rooms
        .apply_pdu(Received {
            outlier,
            checked: true,
            prev_states,
            ..Received::new(room.clone(), pdu)
        })
        .await
}

/// Applies one staged PDU, fetching what it lacks from `origin`.
async fn process(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    origin: &str,
    pdu: CanonicalJsonObject,
) -> Result<(), RoomError> {
    let version = state.rooms.head(room).await?.version;
    let event_id = event_id_of(&pdu, version).map_err(|e| RoomError::BadJson(e.to_string()))?;
    let mut applied = apply(state, room, pdu.clone(), false, Vec::new()).await?;
    if let Applied::MissingAuthEvents(_) = applied {
        fetch_auth_chain(state, room, version, origin, &event_id).await?;
        applied = apply(state, room, pdu.clone(), false, Vec::new()).await?;
    }
    if let Applied::Outlier { .. } = applied {
        fetch_missing_events(state, room, version, origin, &event_id).await?;
        applied = apply(state, room, pdu.clone(), false, Vec::new()).await?;
    }
    if let Applied::Outlier {
        missing_prev_events,
        ..
    } = &applied
    {
        let mut states = Vec::new();
        for prev in missing_prev_events.iter().take(MAX_STATE_GAPS) {
            states.push(state_after(state, room, version, origin, prev).await?);
        }
        if !states.is_empty() {
            applied = apply(state, room, pdu, false, states).await?;
        }
    }
    tracing::debug!(%room, %origin, outcome = ?applied, "applied a staged PDU");
    Ok(())
}

/// Parses a list of PDUs of a response, with their event ids (those that
/// are not objects, not canonical JSON or have no event id are dropped).
/// Public (hidden) for the `federation_response` fuzz target.
#[doc(hidden)]
pub fn parse_pdus(
    list: Vec<Value>,
    version: RoomVersion,
) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
    list.into_iter()
        .filter_map(|v| match v {
            Value::Object(m) => canonical_json::try_from_json_map(m).ok(),
            _ => None,
        })
        .filter_map(|p| Some((event_id_of(&p, version).ok()?, p)))
        .collect()
}

/// Verified PDUs of `room`, lowest depth first (parents before children).
async fn verified_by_depth(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    pdus: Vec<(OwnedEventId, CanonicalJsonObject)>,
) -> Result<Vec<CanonicalJsonObject>, RoomError> {
    let mut ok: Vec<(i64, CanonicalJsonObject)> = Vec::new();
    for (id, outcome) in super::inbound::verify_pdus(state, version, pdus).await? {
        match outcome {
            Ok(p) => {
                let in_room = matches!(p.get("room_id"),
                    Some(canonical_json::CanonicalJsonValue::String(r)) if r == room.as_str());
                if !in_room {
                    tracing::info!(event = %id, "fetched event of another room ignored");
                    continue;
                }
                let depth = match p.get("depth") {
                    Some(canonical_json::CanonicalJsonValue::Integer(d)) => i64::from(*d),
                    _ => 0,
                };
                ok.push((depth, p));
            }
            Err(e) => tracing::info!(event = %id, error = %e, "fetched event refused"),
        }
    }
    ok.sort_by_key(|(d, _)| *d);
    Ok(ok.into_iter().map(|(_, p)| p).collect())
}

#[derive(Deserialize)]
struct AuthChain {
    #[serde(default)]
    auth_chain: Vec<Value>,
}

/// Stores `event_id`'s auth chain (from `origin`) as outliers.
pub(super) async fn fetch_auth_chain(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    origin: &str,
    event_id: &OwnedEventId,
) -> Result<(), RoomError> {
    let path = format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        enc(room.as_str()),
        enc(event_id.as_str())
    );
    let chain: AuthChain = match state
        .federation
        .request_json(origin, "GET", &path, None)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%origin, event = %event_id, error = %e, "cannot fetch an auth chain");
            return Ok(());
        }
    };
    for pdu in
        verified_by_depth(state, room, version, parse_pdus(chain.auth_chain, version)).await?
    {
        apply(state, room, pdu, true, Vec::new()).await?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct MissingEvents {
    #[serde(default)]
    events: Vec<Value>,
}

/// Closes the gap before `event_id` with `/get_missing_events` back to our
/// forward extremities.
async fn fetch_missing_events(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    origin: &str,
    event_id: &OwnedEventId,
) -> Result<(), RoomError> {
    let head = state.rooms.head(room).await?;
    let earliest: Vec<String> = head
        .extremities
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    let min_depth = head.extremities.iter().map(|e| e.depth).min().unwrap_or(0);
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [event_id],
        "limit": MISSING_EVENTS_LIMIT,
        "min_depth": min_depth,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        enc(room.as_str())
    );
    let got: MissingEvents = match state
        .federation
        .request_json(origin, "POST", &path, Some(&body))
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(%origin, event = %event_id, error = %e, "get_missing_events failed");
            return Ok(());
        }
    };
    let mut list = got.events;
    list.truncate(MISSING_EVENTS_LIMIT);
    for pdu in verified_by_depth(state, room, version, parse_pdus(list, version)).await? {
        let id = event_id_of(&pdu, version).map_err(|e| RoomError::BadJson(e.to_string()))?;
        if let Applied::MissingAuthEvents(_) =
            apply(state, room, pdu.clone(), false, Vec::new()).await?
        {
            fetch_auth_chain(state, room, version, origin, &id).await?;
            apply(state, room, pdu, false, Vec::new()).await?;
        }
    }
    Ok(())
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

/// The state after `prev` (an event we lack) as `origin` has it: its
/// `/state_ids`, the events we lack fetched with `/event` and stored as
/// outliers, plus `prev` itself if it is a state event.
pub(super) async fn state_after(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    origin: &str,
    prev: &OwnedEventId,
) -> Result<StateMap, RoomError> {
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(room.as_str()),
        enc(prev.as_str())
    );
    let ids: StateIds = state
        .federation
        .request_json(origin, "GET", &path, None)
        .await
        .map_err(|e| RoomError::BadRequest(format!("state_ids from {origin}: {e}")))?;
    let mut wanted: Vec<String> = ids.auth_chain_ids;
    wanted.extend(ids.pdu_ids.iter().cloned());
    wanted.push(prev.to_string());
    let wanted: Vec<String> = wanted
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.len() > MAX_STATE_FETCH {
        return Err(RoomError::BadRequest(format!(
            "state of {prev} from {origin} has {} events, over {MAX_STATE_FETCH}",
            wanted.len()
        )));
    }
    let known = graph::placed(&state.db, &wanted).await?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|id| !known.contains_key(id))
        .collect();
    let mut fetched = Vec::new();
    for chunk in missing.chunks(FETCH_CONCURRENCY) {
        let jobs = chunk.iter().map(|id| fetch_event(state, origin, id));
        for got in futures_util::future::join_all(jobs).await {
            fetched.extend(got);
        }
    }
    for pdu in verified_by_depth(state, room, version, parse_pdus(fetched, version)).await? {
        // The missing prev itself is stored as an outlier too: its state
        // is known only through the origin's word.
        apply(state, room, pdu, true, Vec::new()).await?;
    }
    let mut out = StateMap::new();
    let listed = ids
        .pdu_ids
        .iter()
        .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok());
    for id in listed.chain(std::iter::once(prev.clone())) {
        if let Some(p) = state.rooms.event(&id).await? {
            if let (Some(k), true) = (&p.state_key, p.room_id == *room) {
                out.insert((p.kind.to_string(), k.clone()), id.to_string());
            }
        }
    }
    Ok(out)
}

/// One event from `origin`'s `/event/{id}` (its `pdus[0]`), if it answers.
async fn fetch_event(state: &ShardState, origin: &str, id: &str) -> Option<Value> {
    let path = format!("/_matrix/federation/v1/event/{}", enc(id));
    match state
        .federation
        .request_json::<EventResponse>(origin, "GET", &path, None)
        .await
    {
        Ok(r) => r.pdus.into_iter().next(),
        Err(e) => {
            tracing::info!(%origin, event = %id, error = %e, "cannot fetch an event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kicked_worker_looks_once_more_before_stopping() {
        let room = OwnedRoomId::try_from("!r:test").unwrap();
        ACTIVE.with(|a| a.borrow_mut().insert(room.clone(), true));
        assert!(!finish(&room), "kicked meanwhile: another round");
        assert!(finish(&room), "nothing new: stops");
        assert!(ACTIVE.with(|a| a.borrow().get(&room).is_none()));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("$a/b:c"), "%24a%2Fb%3Ac");
    }
}

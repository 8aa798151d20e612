//! Fetching history from the room's other servers (server-server
//! "Backfilling and retrieving missing events"): when a `/messages` page
//! reaches the oldest event we hold, or passes a hole in the middle of the
//! timeline, and the room has backward extremities there (events our
//! timeline names but lacks, e.g. the prev events of a remote join, or of
//! the oldest event a `/get_missing_events` gap fill reached),
//! the room's owner shard asks the joined servers in turn for
//! `/backfill?v=<extremities>`, checks the answer and stores it below what
//! we had through the entry point (`Rooms::apply_pdu` with
//! `Received::backfill`). Placement rules: `rooms::backfill` and
//! docs/ARCHITECTURE.md "Backfill".
//!
//! Checks: an answer naming an event of another room is refused whole
//! (nothing of it stored: a server that mixes rooms is not trusted for any
//! of it); signatures and content hashes of the rest in one blocking-pool
//! job (`inbound::verify_pdus`); each event against its own auth events in
//! the entry point (unknown ones fetched with `/event_auth`, as ingest
//! does). The state before an event whose prev events we lack comes from
//! the answering server's `/state_ids` (`ingest::state_after`), so history
//! visibility judges every backfilled event by a state we hold.
//!
//! A server with nothing new for some extremities is remembered
//! (`backward_extremities.tried`) and not asked for them again; a server
//! that fails (timeout, error) is asked again next time.

use std::rc::Rc;
use std::time::Duration;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::Value;

use super::ingest;
use crate::events::{room_id_of, RoomVersion};
use crate::primitives::linearizer::Linearizer;
use crate::rooms::backfill::{self as place, Incoming};
use crate::rooms::graph::{self, Status};
use crate::rooms::receive::{Applied, Backfill, Received};
use crate::rooms::{directory, RoomError};
use crate::shard_state::{on_shard, Here, OnShardError, ShardState};

/// Most events asked of a server at once (what hearth serves, too).
pub const MAX_BACKFILL: usize = 100;
/// Fewest events asked for (a small page still fetches a useful batch).
const MIN_BACKFILL: usize = 10;
/// One server's answer may take this long before the next is asked.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Missing prev events of one event filled from `/state_ids`, at most.
const MAX_STATE_GAPS: usize = 3;

thread_local! {
    /// One backfill of a room at a time on its owner shard: a second
    /// `/messages` waits and then finds the history stored (or the
    /// servers remembered as having nothing).
    static RUNNING: Rc<Linearizer<OwnedRoomId>> = Rc::new(Linearizer::new("backfill", 1));
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// From any shard: fetches history missing at the backward extremities
/// of `room` whose children are at `min_depth` or deeper (`i64::MIN`:
/// all, a page that reached the oldest event) — on its owner shard, as
/// its own task — and returns how many events were stored. `limit`: the
/// client's page size.
pub async fn backfill(
    state: &ShardState,
    room: OwnedRoomId,
    limit: usize,
    min_depth: i64,
) -> Result<usize, RoomError> {
    // Most rooms have none: no hop to the owner for them.
    if place::backward_extremities(&state.db, room.as_str(), min_depth)
        .await?
        .is_empty()
    {
        return Ok(0);
    }
    let owner = state.rooms.owner(&room);
    on_shard(&state.mesh, owner, Here::Spawn, move |s| async move {
        on_owner(&s, &room, limit, min_depth).await
    })
    .await
    .map_err(|e| match e {
        OnShardError::Mesh(e) => RoomError::Mesh(e),
        OnShardError::NoState => RoomError::Internal("shard state not installed".into()),
    })?
}

/// What a server's answer gave.
enum Outcome {
    /// This many events stored.
    Stored(usize),
    /// Nothing new, or an answer refused: do not ask it again for these.
    Nothing,
}

async fn on_owner(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    limit: usize,
    min_depth: i64,
) -> Result<usize, RoomError> {
    let running = RUNNING.with(Rc::clone);
    let _guard = running.queue(room.clone()).await;
    let extremities = place::backward_extremities(&state.db, room.as_str(), min_depth).await?;
    if extremities.is_empty() {
        return Ok(0);
    }
    let version = state.rooms.head(room).await?.version;
    let ours = state.key.server_name.as_str();
    let mut servers = directory::joined_servers(&state.db, room, ours).await?;
    // While a joined room's state is partial its members (so its servers)
    // are mostly unknown: the servers the resident named count too
    // (MSC3706 `servers_in_room`).
    for s in crate::rooms::partial::servers(room).unwrap_or_default() {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    let limit = limit.clamp(MIN_BACKFILL, MAX_BACKFILL);
    for server in servers.iter().filter(|s| s.as_str() != ours) {
        let ask: Vec<String> = extremities
            .iter()
            .filter(|e| !e.tried.contains(server))
            .map(|e| e.event_id.clone())
            .collect();
        if ask.is_empty() {
            continue;
        }
        match from_server(state, room, version, server, &ask, limit).await {
            Ok(Outcome::Stored(n)) => return Ok(n),
            Ok(Outcome::Nothing) => {
                place::mark_tried(&state.db, room.as_str(), &ask, server).await?;
            }
            Err(e) if matches!(e, RoomError::Db(_) | RoomError::Mesh(_)) => return Err(e),
            Err(e) => {
                tracing::info!(%room, %server, error = %e, "backfill failed; trying the next server");
            }
        }
    }
    Ok(0)
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    pdus: Vec<Value>,
}

/// Asks `server` for the history before `ask` and stores what it gives.
async fn from_server(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    server: &str,
    ask: &[String],
    limit: usize,
) -> Result<Outcome, RoomError> {
    let vs: Vec<String> = ask.iter().map(|v| format!("v={}", enc(v))).collect();
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?{}&limit={limit}",
        enc(room.as_str()),
        vs.join("&")
    );
    let request = state
        .federation
        .request_json::<Answer>(server, "GET", &path, None);
    let answer = match monoio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return Err(RoomError::BadRequest(format!(
                "backfill from {server}: {e}"
            )))
        }
        Err(_) => {
            return Err(RoomError::BadRequest(format!(
                "backfill from {server}: timeout"
            )))
        }
    };
    let mut pdus = answer.pdus;
    pdus.truncate(MAX_BACKFILL);
    let given = pdus.len();
    let parsed = ingest::parse_pdus(pdus, version);
    // Another room's event anywhere (or one we cannot read): the whole
    // answer is refused. (A v12 create event names its room by its id.)
    let foreign = parsed
        .iter()
        .find(|(_, p)| room_id_of(p, version).ok().as_ref() != Some(room));
    if let Some((id, _)) = foreign {
        tracing::info!(%room, %server, event = %id,
            "backfill answer holds another room's event; refused whole");
        return Ok(Outcome::Nothing);
    }
    if parsed.len() != given {
        tracing::info!(%room, %server, "backfill answer holds malformed events; refused whole");
        return Ok(Outcome::Nothing);
    }
    let mut verified: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::with_capacity(parsed.len());
    for (id, outcome) in super::inbound::verify_pdus(state, version, parsed).await? {
        match outcome {
            Ok(p) => verified.push((id, p)),
            Err(e) => tracing::info!(event = %id, error = %e, "backfilled event refused"),
        }
    }
    verified.dedup_by(|a, b| a.0 == b.0);
    let ids: Vec<String> = verified.iter().map(|(id, _)| id.to_string()).collect();
    let known = graph::placed(&state.db, &ids).await?;
    let below = place::child_depths(&state.db, room.as_str(), &ids).await?;
    // Rejected before: not history; the rest is planned as one graph.
    verified.retain(|(id, _)| known.get(id.as_str()).map(|p| p.status) != Some(Status::Rejected));
    let batch: Vec<Incoming> = verified
        .iter()
        .map(|(id, p)| Incoming {
            event_id: id.clone(),
            prev_events: prev_events(p),
            stored_depth: known
                .get(id.as_str())
                .filter(|k| matches!(k.status, Status::Timeline | Status::SoftFailed))
                .map(|k| k.depth),
            extremity_depth: below.get(id.as_str()).copied(),
        })
        .collect();
    let plan = place::plan(&batch);
    if plan.is_empty() {
        return Ok(Outcome::Nothing);
    }
    // Children get the higher positions: equal depths sort as the graph.
    let positions = state.rooms.backfill_positions(plan.len()).await?;
    let mut stored = 0;
    for (k, (i, depth)) in plan.iter().enumerate() {
        let (id, pdu) = &verified[*i];
        let spot = Backfill {
            depth: *depth,
            stream: positions[plan.len() - 1 - k],
        };
        match apply_one(state, room, version, server, id, pdu, &batch[*i], spot).await {
            Ok(Applied::Backfilled(_)) => stored += 1,
            Ok(other) => {
                tracing::debug!(event = %id, outcome = ?other, "backfilled event not stored")
            }
            Err(e) if matches!(e, RoomError::Db(_) | RoomError::Mesh(_)) => return Err(e),
            Err(e) => {
                // Its state cannot be had: what descends from it neither.
                tracing::info!(event = %id, error = %e, "backfill stops at an event");
                break;
            }
        }
    }
    Ok(if stored > 0 {
        Outcome::Stored(stored)
    } else {
        Outcome::Nothing
    })
}

fn prev_events(pdu: &CanonicalJsonObject) -> Vec<OwnedEventId> {
    match pdu.get("prev_events") {
        Some(CanonicalJsonValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                CanonicalJsonValue::String(s) => OwnedEventId::try_from(s.as_str()).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Stores one planned event: the state after prev events we lack from
/// `server`'s `/state_ids`, its auth chain if the entry point lacks it.
#[allow(clippy::too_many_arguments)]
async fn apply_one(
    state: &Rc<ShardState>,
    room: &OwnedRoomId,
    version: RoomVersion,
    server: &str,
    id: &OwnedEventId,
    pdu: &CanonicalJsonObject,
    incoming: &Incoming,
    spot: Backfill,
) -> Result<Applied, RoomError> {
    let prev_ids: Vec<String> = incoming.prev_events.iter().map(|e| e.to_string()).collect();
    let prevs = graph::placed(&state.db, &prev_ids).await?;
    let missing = incoming.prev_events.iter().filter(|p| {
        prevs
            .get(p.as_str())
            .is_none_or(|k| k.snapshot.is_none() && k.status != Status::Rejected)
    });
    let mut prev_states = Vec::new();
    for prev in missing.take(MAX_STATE_GAPS) {
        prev_states.push(ingest::state_after(state, room, version, server, prev).await?);
    }
    let received = || Received {
        checked: true,
        prev_states: prev_states.clone(),
        backfill: Some(spot),
        ..Received::new(room.clone(), pdu.clone())
    };
    let mut applied = state.rooms.apply_pdu(received()).await?;
    if let Applied::MissingAuthEvents(_) = applied {
        ingest::fetch_auth_chain(state, room, version, server, id).await?;
        applied = state.rooms.apply_pdu(received()).await?;
    }
    Ok(applied)
}

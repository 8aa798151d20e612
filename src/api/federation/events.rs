//! Federation reads of our rooms (server-server "Retrieving events",
//! "Backfilling and retrieving missing events", "Room State", "Event
//! Auth", `timestamp_to_event`): authenticate, parse, and answer what
//! `rooms::federation_read` found. Access and visibility are decided
//! there.

use std::borrow::Cow;
use std::rc::Rc;

use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::authenticate;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::federation_read::{self as read, MAX_SEEDS};
use crate::rooms::timeline::Dir;
use crate::shard_state::ShardState;

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn event_id(raw: &str) -> Result<OwnedEventId, MatrixError> {
    OwnedEventId::try_from(raw).map_err(|_| MatrixError::invalid_param("Invalid event id"))
}

/// The required `event_id` query parameter of `/state` and `/state_ids`.
fn event_query(req: &Request) -> Result<OwnedEventId, MatrixError> {
    let raw = req
        .query_param("event_id")
        .ok_or_else(|| MatrixError::missing_param("Missing parameter 'event_id'"))?;
    event_id(raw.as_ref())
}

/// A list of event ids from a peer, bounded by [`MAX_SEEDS`].
fn seed_ids<'a>(raw: impl IntoIterator<Item = Cow<'a, str>>) -> Result<Vec<String>, MatrixError> {
    let mut out = Vec::new();
    for v in raw {
        // Some servers join several ids with commas in one `v`.
        for id in v.split(',').filter(|s| !s.is_empty()) {
            if out.len() == MAX_SEEDS {
                return Err(MatrixError::invalid_param(format!(
                    "At most {MAX_SEEDS} event ids"
                )));
            }
            out.push(event_id(id)?.to_string());
        }
    }
    Ok(out)
}

/// The envelope of `/event` and `/backfill` (a Transaction).
fn transaction(state: &ShardState, pdus: Vec<Value>) -> Response {
    Response::json(
        200,
        &json!({
            "origin": state.config.server_name,
            "origin_server_ts": crate::primitives::unix_ms_i64(),
            "pdus": pdus,
        }),
    )
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`.
pub async fn state(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let event = event_query(&req)?;
    let (pdus, chain) =
        read::state_events(&state.db, room.as_str(), &origin.0, event.as_str()).await?;
    Ok(Response::json(
        200,
        &json!({ "pdus": pdus, "auth_chain": chain }),
    ))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`.
pub async fn state_ids(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let event = event_query(&req)?;
    let (pdus, chain) =
        read::state_ids(&state.db, room.as_str(), &origin.0, event.as_str()).await?;
    Ok(Response::json(
        200,
        &json!({ "pdu_ids": pdus, "auth_chain_ids": chain }),
    ))
}

/// `GET /_matrix/federation/v1/event/{eventId}`.
pub async fn event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let id = event_id(&req.param_str("eventId")?)?;
    let pdu = read::event(&state.db, &origin.0, id.as_str()).await?;
    Ok(transaction(&state, vec![pdu]))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`.
pub async fn event_auth(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let id = event_id(&req.param_str("eventId")?)?;
    let chain = read::event_auth(&state.db, room.as_str(), &origin.0, id.as_str()).await?;
    Ok(Response::json(200, &json!({ "auth_chain": chain })))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=`.
pub async fn backfill(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let seeds = seed_ids(req.query_params("v"))?;
    if seeds.is_empty() {
        return Err(MatrixError::missing_param("Missing parameter 'v'"));
    }
    let limit = req
        .query_as::<usize>("limit")?
        .ok_or_else(|| MatrixError::missing_param("Missing parameter 'limit'"))?;
    let pdus = read::backfill(&state.db, room.as_str(), &origin.0, &seeds, limit).await?;
    Ok(transaction(&state, pdus))
}

fn ten() -> usize {
    10
}

#[derive(Deserialize)]
struct MissingBody {
    #[serde(default)]
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    #[serde(default = "ten")]
    limit: usize,
    #[serde(default)]
    min_depth: i64,
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`.
pub async fn get_missing_events(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let body: MissingBody = req.json()?;
    let earliest = seed_ids(
        body.earliest_events
            .iter()
            .map(|s| Cow::Borrowed(s.as_str())),
    )?;
    let latest = seed_ids(body.latest_events.iter().map(|s| Cow::Borrowed(s.as_str())))?;
    let events = read::missing_events(
        &state.db,
        room.as_str(),
        &origin.0,
        &earliest,
        &latest,
        body.limit,
        body.min_depth,
    )
    .await?;
    Ok(Response::json(200, &json!({ "events": events })))
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=`.
pub async fn timestamp_to_event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let room = room_param(&req)?;
    let ts = req
        .query_as::<i64>("ts")?
        .ok_or_else(|| MatrixError::missing_param("Missing parameter 'ts'"))?;
    let dir = match req.query_param("dir").as_deref() {
        Some("f") => Dir::Forward,
        Some("b") => Dir::Back,
        Some(_) => return Err(MatrixError::invalid_param("'dir' must be 'f' or 'b'")),
        None => return Err(MatrixError::missing_param("Missing parameter 'dir'")),
    };
    let (id, ts) = read::timestamp_to_event(&state.db, room.as_str(), &origin.0, ts, dir).await?;
    Ok(Response::json(
        200,
        &json!({ "event_id": id, "origin_server_ts": ts }),
    ))
}

//! Room history endpoints (client-server "Getting events for a room",
//! "Redactions", "Leaving rooms" → forget, event_context.yaml,
//! room_event_by_timestamp.yaml): parse and validate the request here,
//! run it in `rooms::history` / `rooms::forget` on this shard (reads) or
//! on the room's owner shard (the redaction, a write).

use std::rc::Rc;

use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{self, Requester};
use crate::filter::RoomEventFilter;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::rooms::history::{self, MessagesQuery};
use crate::rooms::timeline::{Dir, PageToken, RoomToken};
use crate::rooms::{client, forget, EventRequest, Viewer};
use crate::shard_state::ShardState;

use crate::admission::Work;
use crate::api::util::json_body;

/// Default `limit` of `/messages` and `/context` (spec: 10).
const DEFAULT_LIMIT: usize = 10;

fn room_param(req: &Request) -> Result<OwnedRoomId, MatrixError> {
    let raw = req.param_str("roomId")?;
    OwnedRoomId::try_from(raw.as_ref()).map_err(|_| MatrixError::invalid_param("Invalid room id"))
}

fn event_param(req: &Request) -> Result<OwnedEventId, MatrixError> {
    let raw = req.param_str("eventId")?;
    OwnedEventId::try_from(raw.as_ref()).map_err(|_| MatrixError::not_found("event not found"))
}

fn viewer(who: &Requester) -> Viewer {
    Viewer {
        user_id: who.user_id.to_string(),
        device_id: Some(who.device_id.clone()),
    }
}

/// A pagination token parameter; malformed is 400 `M_INVALID_PARAM`.
pub(crate) fn token_param(req: &Request, name: &str) -> Result<Option<PageToken>, MatrixError> {
    req.query_param(name)
        .map(|t| {
            PageToken::parse(&t).map_err(|_| {
                MatrixError::invalid_param(format!("Invalid pagination token '{name}'"))
            })
        })
        .transpose()
}

fn dir_param(req: &Request, default: Option<Dir>) -> Result<Dir, MatrixError> {
    match req.query_param("dir").as_deref() {
        Some("b") => Ok(Dir::Back),
        Some("f") => Ok(Dir::Forward),
        None => default.ok_or_else(|| MatrixError::missing_param("Missing parameter 'dir'")),
        Some(_) => Err(MatrixError::invalid_param("dir must be 'b' or 'f'")),
    }
}

fn limit_param(req: &Request) -> Result<usize, MatrixError> {
    Ok(req
        .query_as::<usize>("limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .min(history::MAX_LIMIT))
}

fn filter_param(req: &Request) -> Result<RoomEventFilter, MatrixError> {
    match req.query_param("filter") {
        None => Ok(RoomEventFilter::default()),
        Some(f) => Ok(RoomEventFilter::parse(&f)?),
    }
}

/// `GET /rooms/{roomId}/messages`.
pub async fn messages(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    // Synapse defaults a missing `dir` to backwards.
    let q = MessagesQuery {
        dir: dir_param(&req, Some(Dir::Back))?,
        from: token_param(&req, "from")?,
        to: token_param(&req, "to")?,
        limit: limit_param(&req)?,
        filter: filter_param(&req)?,
    };
    // A page of hundreds of events (and their serialised JSON) is built in
    // memory: large pages take turns per shard (`admission`).
    let _permit = match state.admission.is_large_page(q.limit) {
        true => Some(
            state
                .admission
                .enter(Work::LargeMessages, who.user_id.as_str())
                .await?,
        ),
        false => None,
    };
    let me = viewer(&who);
    let ask = |q: MessagesQuery| {
        history::messages(&state.db, state.mesh.n_shards(), room_id.as_str(), &me, q)
    };
    let mut out = ask(q.clone()).await?;
    // The walk reached the oldest event we hold, or passed a hole in the
    // timeline (a backward extremity whose child is in this page): ask the
    // room's other servers for what is missing, then answer the page with
    // it (server-server "Backfilling"; `federation::backfill`). Servers
    // with nothing for a hole are remembered, so a page asks once.
    let mut rounds = 0;
    while q.dir == Dir::Back && rounds < BACKFILL_ROUNDS {
        let min_depth = match out.get("end").and_then(Value::as_str) {
            None if q.to.is_none() => i64::MIN,
            None => break,
            Some(end) => match RoomToken::parse(end) {
                Ok(t) => t.0.depth,
                Err(_) => break,
            },
        };
        rounds += 1;
        match crate::federation::backfill::backfill(&state, room_id.clone(), q.limit, min_depth)
            .await
        {
            Ok(0) => break,
            Ok(_) => out = ask(q.clone()).await?,
            Err(e) => {
                // What we hold is still an answer.
                tracing::info!(room = %room_id, error = %e, "backfill failed");
                break;
            }
        }
    }
    Ok(Response::json(200, &out))
}

/// Backfills one `/messages` page may wait for, at most.
const BACKFILL_ROUNDS: usize = 3;

/// `GET /rooms/{roomId}/context/{eventId}`.
pub async fn context(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let event_id = event_param(&req)?;
    let out = history::context(
        &state.db,
        room_id.as_str(),
        &viewer(&who),
        event_id.as_str(),
        limit_param(&req)?,
        &filter_param(&req)?,
    )
    .await?;
    Ok(Response::json(200, &out))
}

/// `GET /rooms/{roomId}/event/{eventId}`.
pub async fn get_event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let event_id = event_param(&req)?;
    let ev = history::get_event(
        &state.db,
        room_id.as_str(),
        &viewer(&who),
        event_id.as_str(),
    )
    .await?;
    Ok(Response::json(200, &ev))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=`.
pub async fn timestamp_to_event(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    let ts = req
        .query_as::<i64>("ts")?
        .ok_or_else(|| MatrixError::missing_param("Missing parameter 'ts'"))?;
    let dir = dir_param(&req, None)?;
    let out =
        history::timestamp_to_event(&state.db, room_id.as_str(), who.user_id.as_str(), ts, dir)
            .await?;
    Ok(Response::json(200, &out))
}

#[derive(Deserialize)]
struct RedactBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: an `m.room.redaction`
/// sent like `PUT /send` (idempotent per device and txn id); the owner
/// shard checks the target and the sender's right to redact it.
pub async fn redact(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    state
        .limits
        .take(crate::ratelimit::Action::Message, who.user_id.as_str())?;
    let room_id = room_param(&req)?;
    let target = event_param(&req)?;
    let txn = req.param_str("txnId")?.into_owned();
    let body: RedactBody = json_body(&req)?;
    let mut content = CanonicalJsonObject::new();
    if let Some(r) = body.reason {
        content.insert("reason".into(), r.into());
    }
    let id = client::send_event(
        &state.mesh,
        EventRequest {
            room_id,
            sender: who.user_id,
            event_type: "m.room.redaction".into(),
            state_key: None,
            content,
            txn: Some((who.device_id, txn)),
            redacts: Some(target),
        },
    )
    .await?;
    Ok(Response::json(200, &json!({ "event_id": id })))
}

/// `POST /rooms/{roomId}/forget`.
pub async fn forget(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let who = auth::require_user(&state, &req).await?;
    let room_id = room_param(&req)?;
    forget::forget(&state.db, room_id.as_str(), who.user_id.as_str()).await?;
    Ok(Response::json(200, &json!({})))
}

/// `GET /rooms/{roomId}/members?at=…`: the members as of a token (called
/// by the `/members` handler when `at` is given).
pub(crate) async fn members_at(
    state: &ShardState,
    who: &Requester,
    room_id: &OwnedRoomId,
    at: &PageToken,
    membership: Option<&str>,
    not_membership: Option<&str>,
) -> Result<Vec<serde_json::Value>, MatrixError> {
    Ok(history::members_at(
        &state.db,
        state.mesh.n_shards(),
        room_id.as_str(),
        &viewer(who),
        at,
        membership,
        not_membership,
    )
    .await?)
}

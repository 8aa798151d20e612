//! Reading room history: `/messages`, `/context`, `/event`,
//! `timestamp_to_event` and `/members?at=`.
//!
//! These read committed rows on the shard that took the request (no mesh
//! hop: an event id reaches a client only after COMMIT, so every shard
//! reads it back), check access and history visibility
//! (`rooms::visibility`), and serve through `rooms::serve`.

use serde_json::{json, Value};

use crate::db::{DbError, Pool};

use super::serve::{self, Viewer};
use super::state;
use super::timeline::{self, Dir, PageToken, RoomPos, RoomToken, TimelineEvent};
use super::visibility::{self, check_access, Access};
use super::RoomError;
use crate::filter::RoomEventFilter;

/// Rounds of fetching a page when history visibility hides rows, before
/// answering a short chunk (with `end`, so the client continues).
const MAX_ROUNDS: usize = 5;
/// Most events one `/messages` or `/context` call returns.
pub const MAX_LIMIT: usize = 1000;

/// Errors of history reads; mapped to Matrix errors below, in one place.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl From<DbError> for HistoryError {
    fn from(e: DbError) -> Self {
        HistoryError::Room(e.into())
    }
}

/// Events read by a walk, and where it stopped.
struct Walk {
    events: Vec<TimelineEvent>,
    /// Position after the last event scanned (visible or not).
    cursor: RoomPos,
    /// Whether more matching events lie beyond `cursor` before `to`.
    more: bool,
}

/// Parameters of one walk through a room's history.
struct WalkSpec<'a> {
    room_id: &'a str,
    user: &'a str,
    peeking: bool,
    dir: Dir,
    filter: &'a RoomEventFilter,
    limit: usize,
}

/// Walks from `from` towards `to`, keeping visible events, refetching
/// (up to [`MAX_ROUNDS`]) when visibility hid some.
async fn walk(
    db: &Pool,
    spec: &WalkSpec<'_>,
    from: RoomPos,
    to: RoomPos,
) -> Result<Walk, RoomError> {
    let mut cursor = from;
    let mut events = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let want = spec.limit - events.len();
        let mut rows = timeline::page(
            db,
            spec.room_id,
            spec.dir,
            cursor,
            to,
            spec.filter,
            want + 1,
        )
        .await?;
        let more = rows.len() > want;
        rows.truncate(want);
        if let Some(last) = rows.last() {
            cursor = match spec.dir {
                Dir::Back => last.pos.predecessor(),
                Dir::Forward => last.pos,
            };
        }
        events.extend(visibility::filter_events(db, spec.user, spec.peeking, rows).await?);
        if !more || events.len() >= spec.limit {
            return Ok(Walk {
                events,
                cursor,
                more,
            });
        }
    }
    Ok(Walk {
        events,
        cursor,
        more: true,
    })
}

/// The effective limit: the query's, capped by the filter's and [`MAX_LIMIT`].
fn effective_limit(limit: usize, filter: &RoomEventFilter) -> usize {
    let f = filter
        .base
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    limit.min(f).min(MAX_LIMIT)
}

/// A `/messages` request, parsed.
#[derive(Debug, Clone)]
pub struct MessagesQuery {
    pub dir: Dir,
    pub from: Option<PageToken>,
    pub to: Option<PageToken>,
    pub limit: usize,
    pub filter: RoomEventFilter,
}

/// `GET /rooms/{roomId}/messages` (message_pagination.yaml). `start` echoes
/// `from` (or names the room's newest/oldest position); `end` is omitted
/// when nothing lies further; with `lazy_load_members`, `state` holds the
/// member events of the chunk's senders.
pub async fn messages(
    db: &Pool,
    n_shards: usize,
    room_id: &str,
    viewer: &Viewer,
    q: MessagesQuery,
) -> Result<Value, HistoryError> {
    let access = check_access(db, room_id, &viewer.user_id).await?;
    let (from, start) = match &q.from {
        Some(t) => (t.resolve(db, room_id, n_shards).await?, t.to_string()),
        None => {
            let p = match q.dir {
                Dir::Back => timeline::latest_pos(db, room_id)
                    .await?
                    .unwrap_or(RoomPos::START),
                Dir::Forward => RoomPos::START,
            };
            (p, RoomToken(p).to_string())
        }
    };
    let to = match &q.to {
        Some(t) => t.resolve(db, room_id, n_shards).await?,
        None if q.dir == Dir::Back => RoomPos::START,
        None => RoomPos::END,
    };
    let (from, to) = match q.dir {
        Dir::Back => (access.clamp(from), to),
        Dir::Forward => (from, access.clamp(to)),
    };
    let spec = WalkSpec {
        room_id,
        user: &viewer.user_id,
        peeking: access.peeking,
        dir: q.dir,
        filter: &q.filter,
        limit: effective_limit(q.limit, &q.filter),
    };
    let w = walk(db, &spec, from, to).await?;
    let chunk = serve::client_events(db, &w.events, Some(viewer)).await?;
    let mut out = json!({ "chunk": chunk, "start": start });
    if w.more {
        out["end"] = RoomToken(w.cursor).to_string().into();
    }
    if q.filter.lazy_load_members {
        let state = match w.events.first() {
            Some(first) => lazy_members(db, first.snapshot_id, &w.events, viewer).await?,
            None => Vec::new(),
        };
        out["state"] = state.into();
    }
    Ok(out)
}

/// The member events (at snapshot `snapshot`) of the senders of `events`.
async fn lazy_members(
    db: &Pool,
    snapshot: i64,
    events: &[TimelineEvent],
    viewer: &Viewer,
) -> Result<Vec<Value>, RoomError> {
    let mut keys: Vec<(String, String)> = events
        .iter()
        .map(|e| ("m.room.member".to_owned(), e.pdu.sender.to_string()))
        .collect();
    keys.sort();
    keys.dedup();
    let ids: Vec<String> = visibility::load_state_keys(db, snapshot, &keys)
        .await?
        .into_values()
        .collect();
    serve::client_events_by_id(db, &ids, Some(viewer)).await
}

/// The user's current membership in the room, if any.
async fn current_membership(
    db: &Pool,
    room_id: &str,
    user: &str,
) -> Result<Option<String>, RoomError> {
    let row = db
        .query_opt(
            "SELECT membership FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND state_key = $2",
            &[&room_id, &user],
        )
        .await?;
    Ok(row
        .map(|r| r.get::<Option<String>>(0))
        .transpose()?
        .flatten())
}

/// An event of `room_id` the viewer may see, or 404 (unknown, other room,
/// or hidden by history visibility: Synapse answers 404 for all three).
async fn visible_event(
    db: &Pool,
    room_id: &str,
    user: &str,
    peeking: bool,
    event_id: &str,
) -> Result<TimelineEvent, RoomError> {
    let not_found = || RoomError::NotFound("event not found".into());
    let ev = timeline::load_timeline_by_ids(db, &[event_id.to_owned()])
        .await?
        .remove(event_id)
        .filter(|e| e.pdu.room_id.as_str() == room_id)
        .ok_or_else(not_found)?;
    visibility::filter_events(db, user, peeking, vec![ev])
        .await?
        .pop()
        .ok_or_else(not_found)
}

/// `GET /rooms/{roomId}/event/{eventId}`: anyone not currently joined
/// reads as a peeker (Synapse `EventHandler.get_event`).
pub async fn get_event(
    db: &Pool,
    room_id: &str,
    viewer: &Viewer,
    event_id: &str,
) -> Result<Value, HistoryError> {
    let joined = current_membership(db, room_id, &viewer.user_id).await?;
    let peeking = joined.as_deref() != Some("join");
    let ev = visible_event(db, room_id, &viewer.user_id, peeking, event_id).await?;
    let mut served = serve::client_events(db, &[ev], Some(viewer)).await?;
    served
        .pop()
        .ok_or_else(|| RoomError::NotFound("event not found".into()).into())
}

/// Deprecated `GET /events/{eventId}`: the room is the event's own, then the
/// same visibility checks as [`get_event`]; an unknown event is a 404.
pub async fn get_event_any_room(
    db: &Pool,
    viewer: &Viewer,
    event_id: &str,
) -> Result<Value, HistoryError> {
    let room_id = timeline::load_timeline_by_ids(db, &[event_id.to_owned()])
        .await?
        .remove(event_id)
        .map(|e| e.pdu.room_id.to_string())
        .ok_or_else(|| RoomError::NotFound("event not found".into()))?;
    get_event(db, &room_id, viewer, event_id).await
}

/// `GET /rooms/{roomId}/context/{eventId}` (event_context.yaml): `limit`
/// split as Synapse does (half before, the rest after); `state` is the
/// state at the last event returned (only the senders' member events
/// when `lazy_load_members`).
pub async fn context(
    db: &Pool,
    room_id: &str,
    viewer: &Viewer,
    event_id: &str,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Value, HistoryError> {
    let access: Access = check_access(db, room_id, &viewer.user_id).await?;
    let user = viewer.user_id.as_str();
    let ev = visible_event(db, room_id, user, access.peeking, event_id).await?;
    if access.clamp(ev.pos) != ev.pos {
        return Err(RoomError::NotFound("event not found".into()).into());
    }
    let limit = effective_limit(limit, filter);
    let before_limit = limit / 2;
    let mut spec = WalkSpec {
        room_id,
        user,
        peeking: access.peeking,
        dir: Dir::Back,
        filter,
        limit: before_limit,
    };
    let before = walk(db, &spec, ev.pos.predecessor(), RoomPos::START).await?;
    spec.dir = Dir::Forward;
    spec.limit = limit - before_limit;
    let after = walk(db, &spec, ev.pos, access.clamp(RoomPos::END)).await?;
    let last = after.events.last().unwrap_or(&ev);
    let mut state_ids: Vec<String> = state::load(db, last.snapshot_id)
        .await?
        .into_iter()
        .filter(|((t, k), _)| {
            !filter.lazy_load_members
                || t != "m.room.member"
                || before
                    .events
                    .iter()
                    .chain(after.events.iter())
                    .chain(std::iter::once(&ev))
                    .any(|e| e.pdu.sender.as_str() == k)
        })
        .map(|(_, id)| id)
        .collect();
    state_ids.sort();
    let out = json!({
        "event": serve::client_events(db, std::slice::from_ref(&ev), Some(viewer)).await?,
        "events_before": serve::client_events(db, &before.events, Some(viewer)).await?,
        "events_after": serve::client_events(db, &after.events, Some(viewer)).await?,
        "state": serve::client_events_by_id(db, &state_ids, Some(viewer)).await?,
        "start": RoomToken(before.cursor).to_string(),
        "end": RoomToken(after.cursor).to_string(),
    });
    let mut out = out;
    // `event` is one object, not a list.
    out["event"] = out["event"].get(0).cloned().unwrap_or(Value::Null);
    Ok(out)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
/// (room_event_by_timestamp.yaml): the event closest to `ts` in `dir`
/// (`f`: the first at or after, `b`: the last at or before), local only.
pub async fn timestamp_to_event(
    db: &Pool,
    room_id: &str,
    user: &str,
    ts: i64,
    dir: Dir,
) -> Result<Value, HistoryError> {
    let access = check_access(db, room_id, user).await?;
    let (id, ts) = closest_event(db, room_id, ts, dir, access.clamp(RoomPos::END))
        .await?
        .ok_or_else(|| RoomError::NotFound(format!("no event found near {ts}")))?;
    Ok(json!({ "event_id": id, "origin_server_ts": ts }))
}

/// The event of `room_id` closest to `ts` in `dir` among those at or
/// before `until` in room order: `(event_id, origin_server_ts)`. Shared
/// by the client and federation `timestamp_to_event`.
pub async fn closest_event(
    db: &Pool,
    room_id: &str,
    ts: i64,
    dir: Dir,
    until: RoomPos,
) -> Result<Option<(String, i64)>, RoomError> {
    let sql = match dir {
        Dir::Forward => {
            "SELECT event_id, (json->>'origin_server_ts')::bigint AS ts FROM events \
             WHERE room_id = $1 AND (json->>'origin_server_ts')::bigint >= $2 \
             AND (depth, stream_shard, stream_ordering) <= ($3, $4, $5) \
             ORDER BY ts ASC, depth ASC, stream_shard ASC, stream_ordering ASC LIMIT 1"
        }
        Dir::Back => {
            "SELECT event_id, (json->>'origin_server_ts')::bigint AS ts FROM events \
             WHERE room_id = $1 AND (json->>'origin_server_ts')::bigint <= $2 \
             AND (depth, stream_shard, stream_ordering) <= ($3, $4, $5) \
             ORDER BY ts DESC, depth DESC, stream_shard DESC, stream_ordering DESC LIMIT 1"
        }
    };
    let row = db
        .query_opt(
            sql,
            &[&room_id, &ts, &until.depth, &until.shard, &until.stream],
        )
        .await?;
    row.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
}

/// `GET /rooms/{roomId}/members?at=`: the member events in the state at
/// the latest event at/before `at` (a departed user: at most their leave),
/// filtered by `membership` / `not_membership`.
pub async fn members_at(
    db: &Pool,
    n_shards: usize,
    room_id: &str,
    viewer: &Viewer,
    at: &PageToken,
    membership: Option<&str>,
    not_membership: Option<&str>,
) -> Result<Vec<Value>, HistoryError> {
    let access = check_access(db, room_id, &viewer.user_id).await?;
    let pos = access.clamp(at.resolve(db, room_id, n_shards).await?);
    let latest = timeline::page(
        db,
        room_id,
        Dir::Back,
        pos,
        RoomPos::START,
        &RoomEventFilter::default(),
        1,
    )
    .await?;
    let Some(latest) = latest.first() else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<String> = state::load(db, latest.snapshot_id)
        .await?
        .into_iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|(_, id)| id)
        .collect();
    ids.sort();
    let events = serve::client_events_by_id(db, &ids, Some(viewer)).await?;
    Ok(events
        .into_iter()
        .filter(|ev| {
            let m = ev["content"]["membership"].as_str().unwrap_or_default();
            membership.is_none_or(|want| want == m) && not_membership.is_none_or(|not| not != m)
        })
        .collect())
}

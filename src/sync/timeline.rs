//! A room's timeline slice for one sync and the state around it: from the
//! per-shard window when it covers the range, from PostgreSQL otherwise.
//!
//! Ranges are `(lower, upper]` in stream tokens; a room's events are
//! compared with the token component of the shard that wrote them
//! (`($1::bigint[])[stream_shard + 1]`), so this holds even if a room's
//! events were written by several shards.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use ruma::OwnedRoomId;
use serde_json::{Map, Value};

use crate::db::{Pool, Row};
use crate::rooms::state::StateMap;
use crate::rooms::timeline::{TimelineEvent, EVENT_COLUMNS};
use crate::stream::StreamToken;

use super::cache::{SyncCache, TlEvent};
use super::SyncError;
use crate::filter::RoomEventFilter;

/// Rows read per page when filling a filtered timeline from the database.
const PAGE: usize = 50;
/// Pages read at most per room and sync (then the timeline is `limited`).
const MAX_PAGES: usize = 8;

/// A timeline row: `rooms::timeline::EVENT_COLUMNS` (0–7, so
/// `TimelineEvent::from_row` reads the events kept) then ours (8–11).
fn event_cols() -> String {
    format!("{EVENT_COLUMNS}, e.type, e.state_key, e.sender, e.room_id, e.resolved")
}

/// The chosen timeline of a room.
#[derive(Debug, Default)]
pub struct Slice {
    /// Chronological, matching the timeline filter, at most the limit.
    pub events: Vec<Rc<TlEvent>>,
    /// More matching events exist in the range than were returned.
    pub limited: bool,
    /// Some event of the range (matching or not) precedes the first one
    /// returned: the client has not seen the state changes in between.
    pub gap: bool,
    /// A state resolution in the range changed state beyond its event:
    /// the timeline alone does not give the client the new state.
    pub resolved: bool,
}

fn shard_of(r: &Row, i: usize) -> Result<usize, SyncError> {
    let s: i32 = r.get(i)?;
    usize::try_from(s).map_err(|_| SyncError::Internal(format!("bad stream_shard {s}")))
}

/// Client format from the stored federation JSON (the `room_id` column
/// covers v12 create events, which have none in their JSON).
pub fn client_event(event_id: &str, room_id: &str, pdu: &Value) -> Value {
    let mut m = Map::new();
    m.insert("event_id".into(), event_id.into());
    m.insert("room_id".into(), room_id.into());
    for k in ["sender", "type", "origin_server_ts", "state_key", "redacts"] {
        if let Some(v) = pdu.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    m.insert(
        "content".into(),
        pdu.get("content")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
    );
    m.insert("unsigned".into(), Value::Object(Map::new()));
    Value::Object(m)
}

fn row_event(r: &Row) -> Result<TlEvent, SyncError> {
    let json: Value = r.get(1)?;
    let event_id: String = r.get(0)?;
    let room_id: String = r.get(11)?;
    let event_type: String = r.get(8)?;
    let state_key: Option<String> = r.get(9)?;
    let membership = (event_type == "m.room.member")
        .then(|| json["content"]["membership"].as_str().map(str::to_owned))
        .flatten();
    Ok(TlEvent {
        shard: shard_of(r, 3)?,
        pos: r.get(4)?,
        event: Arc::new(client_event(&event_id, &room_id, &json)),
        event_id,
        event_type,
        state_key,
        sender: r.get(10)?,
        membership,
        resolved: r.get(12)?,
        full: OnceCell::new(),
        served: OnceCell::new(),
        raw: OnceCell::new(),
    })
}

/// Scalar bounds over every shard's position, so the planner can use the
/// `(room_id, stream_ordering)` index as a range (the per-shard array
/// comparison then only refines it).
fn min(v: &[i64]) -> i64 {
    v.iter().copied().min().unwrap_or(0)
}

fn max(v: &[i64]) -> i64 {
    v.iter().copied().max().unwrap_or(0)
}

/// Selects the last `limit` events of `room` in `(lower, upper]` that pass
/// `filter`.
pub async fn select(
    db: &Pool,
    cache: &SyncCache,
    room: &OwnedRoomId,
    lower: &StreamToken,
    upper: &StreamToken,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Slice, SyncError> {
    let pass = |e: &TlEvent| filter.allows_event(room.as_str(), &e.event);
    if let Some(all) = cache.range(room, lower, upper) {
        let matched: Vec<&Rc<TlEvent>> = all.iter().filter(|e| pass(e)).collect();
        let skip = matched.len().saturating_sub(limit);
        let events: Vec<Rc<TlEvent>> = matched[skip..].iter().map(|e| (*e).clone()).collect();
        let gap = match events.first() {
            Some(first) => all.first().is_some_and(|a| a.pos != first.pos),
            None => !all.is_empty(),
        };
        return Ok(Slice {
            events,
            limited: skip > 0,
            gap,
            resolved: all.iter().any(|e| e.resolved),
        });
    }
    let n = lower.len().max(upper.len());
    let lo = lower.persisted_vec(n);
    let mut hi = upper.persisted_vec(n);
    let mut newest_first: Vec<Rc<TlEvent>> = Vec::new();
    // Unmatched events older than the oldest matched one so far.
    let mut unmatched_tail = false;
    let mut truncated = false;
    // Rows not read are older than a gap, which computes the state anyway.
    let mut resolved = false;
    let page = (limit + 1).max(PAGE);
    let page_i64 = i64::try_from(page).unwrap_or(i64::MAX);
    for round in 0..MAX_PAGES {
        let rows = db
            .query(
                &format!(
                    "SELECT {} FROM events e JOIN rooms r USING (room_id) \
                     WHERE e.room_id = $1 \
                     AND e.stream_ordering > ($2::bigint[])[e.stream_shard + 1] \
                     AND e.stream_ordering <= ($3::bigint[])[e.stream_shard + 1] \
                     AND e.stream_ordering > $5 AND e.stream_ordering <= $6 \
                     ORDER BY e.stream_ordering DESC LIMIT $4",
                    event_cols()
                ),
                &[&room.as_str(), &lo, &hi, &page_i64, &min(&lo), &max(&hi)],
            )
            .await?;
        let got = rows.len();
        for r in &rows {
            if newest_first.len() > limit {
                break;
            }
            let e = row_event(r)?;
            resolved |= e.resolved;
            if pass(&e) {
                // Kept: visibility and serving need the stored event.
                let _ = e.full.set(TimelineEvent::from_row(r)?);
                newest_first.push(Rc::new(e));
                unmatched_tail = false;
            } else {
                unmatched_tail = true;
            }
            if let Some(slot) = hi.get_mut(shard_of(r, 3)?) {
                *slot = r.get::<i64>(4)? - 1;
            }
        }
        if newest_first.len() > limit || got < page {
            break;
        }
        if round + 1 == MAX_PAGES {
            // Too sparse to fill: say so, the client can paginate.
            truncated = true;
        }
    }
    let limited = newest_first.len() > limit || truncated;
    newest_first.truncate(limit);
    newest_first.reverse();
    // More matching events, or unmatched ones before the first kept:
    // either way the client has not seen part of the range.
    let gap = limited || unmatched_tail;
    Ok(Slice {
        events: newest_first,
        limited,
        gap,
        resolved,
    })
}

/// The room's current state as of `upper`: as it was once its last event
/// at or before `upper` was applied (`events.room_snapshot`: with forks,
/// the resolution of the extremities, not that event's own state).
pub async fn state_at(
    db: &Pool,
    cache: &SyncCache,
    room: &OwnedRoomId,
    upper: &StreamToken,
) -> Result<Rc<StateMap>, SyncError> {
    let hi = upper.persisted_vec(upper.len());
    let row = db
        .query_opt(
            "SELECT coalesce(room_snapshot, snapshot_id) FROM events WHERE room_id = $1 \
             AND stream_ordering <= ($2::bigint[])[stream_shard + 1] \
             AND stream_ordering <= $3 AND stream_ordering >= 0 \
             ORDER BY stream_ordering DESC LIMIT 1",
            &[&room.as_str(), &hi, &max(&hi)],
        )
        .await?;
    let Some(id) = row.map(|r| r.get::<Option<i64>>(0)).transpose()?.flatten() else {
        return Ok(Rc::new(StateMap::new()));
    };
    snapshot(db, cache, id).await
}

/// A state snapshot by id, cached.
pub async fn snapshot(db: &Pool, cache: &SyncCache, id: i64) -> Result<Rc<StateMap>, SyncError> {
    cache
        .load_snapshot(db, id)
        .await
        .map_err(|e| SyncError::Internal(format!("loading state snapshot {id}: {e}")))
}

/// One of the user's member events.
#[derive(Debug, Clone)]
pub struct MemberChange {
    pub shard: usize,
    pub pos: i64,
    pub membership: String,
    pub event_id: String,
    pub snapshot_id: Option<i64>,
}

/// The user's member events in `room` in `(lower, upper]`, chronological
/// (`lower = None`: from the start).
pub async fn member_changes(
    db: &Pool,
    room: &OwnedRoomId,
    user: &str,
    lower: Option<&StreamToken>,
    upper: &StreamToken,
) -> Result<Vec<MemberChange>, SyncError> {
    let n = upper.len().max(lower.map_or(0, StreamToken::len));
    let lo = lower.map_or_else(|| vec![0; n], |l| l.persisted_vec(n));
    let hi = upper.persisted_vec(n);
    let rows = db
        .query(
            "SELECT stream_shard, stream_ordering, json->'content'->>'membership', event_id, \
             snapshot_id FROM events WHERE room_id = $1 AND type = 'm.room.member' \
             AND state_key = $2 \
             AND stream_ordering > ($3::bigint[])[stream_shard + 1] \
             AND stream_ordering <= ($4::bigint[])[stream_shard + 1] \
             AND stream_ordering > $5 AND stream_ordering <= $6 \
             ORDER BY stream_ordering",
            &[&room.as_str(), &user, &lo, &hi, &min(&lo), &max(&hi)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(MemberChange {
                shard: shard_of(r, 0)?,
                pos: r.get(1)?,
                membership: r.get::<Option<String>>(2)?.unwrap_or_default(),
                event_id: r.get(3)?,
                snapshot_id: r.get(4)?,
            })
        })
        .collect()
}

/// `unsigned.transaction_id` of the events `device` of `user` sent, by id.
pub async fn txn_ids(
    db: &Pool,
    user: &str,
    device: &str,
    event_ids: Vec<String>,
) -> Result<HashMap<String, String>, SyncError> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db
        .query(
            "SELECT event_id, txn_id FROM txn_ids WHERE event_id = ANY($1) \
             AND user_id = $2 AND device_id = $3",
            &[&event_ids, &user, &device],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, SyncError>>()
}

/// `token` with shard `s`'s persisted position replaced by `pos`.
pub fn with_persisted(token: &StreamToken, s: usize, pos: i64) -> StreamToken {
    let positions = (0..token.len().max(s + 1))
        .map(|i| {
            let mut p = token.get(i);
            if i == s {
                p.persisted = pos;
            }
            p
        })
        .collect();
    StreamToken::from_positions(positions)
}

//! The sync response (client-server API "GET /sync", `sync.yaml`): the
//! sections of each room and the fields clients need even when empty.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId};
use serde::Serialize;
use serde_json::{json, Value};

use crate::mesh::shard_for_room;
use crate::rooms::state::StateMap;
use crate::stream::StreamToken;

use super::cache::SyncCache;
use super::serve::ServedEvent;
use super::timeline::{self, MemberChange};
use super::{extensions, serve, SyncContext, SyncError};

/// State keys shown to invitees and knockers (spec "Stripped state"; the
/// member event of the inviter is added separately).
const STRIPPED_TYPES: [&str; 6] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// `{"events": [...]}`, the shape of every event list in a sync.
#[derive(Debug, Serialize)]
pub struct Events<T> {
    pub events: Vec<T>,
}

impl<T> Default for Events<T> {
    fn default() -> Self {
        Events { events: Vec::new() }
    }
}

#[derive(Debug, Default, Serialize)]
struct Counts {
    highlight_count: u64,
    notification_count: u64,
}

impl From<crate::push::counts::Counts> for Counts {
    fn from(c: crate::push::counts::Counts) -> Counts {
        Counts {
            highlight_count: c.highlights,
            notification_count: c.notifications,
        }
    }
}

/// `unread_notifications` and, when the filter asks for them per thread
/// (`unread_thread_notifications`), `unread_thread_notifications`: then
/// the first is the main timeline's only (spec "Threading" → "Receiving
/// notifications"). Read on the room's owner shard once push evaluation
/// caught up with this sync's token (`push::counts::for_sync`).
async fn unread(
    ctx: &SyncContext,
    room: &OwnedRoomId,
) -> Result<(Counts, Option<BTreeMap<String, Counts>>), SyncError> {
    let Some(state) = crate::shard_state::current_shard() else {
        return Ok((Counts::default(), None));
    };
    let current = ctx.current.clone();
    let per_thread =
        crate::push::counts::for_sync(&state.mesh, ctx.user.clone(), room.clone(), move |s| {
            current.persisted(s)
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?;
    if !ctx.filter.room.timeline.unread_thread_notifications {
        let mut all = crate::push::counts::Counts::default();
        for c in per_thread.into_values() {
            all += c;
        }
        return Ok((all.into(), None));
    }
    let mut main = Counts::default();
    let mut threads = BTreeMap::new();
    for (t, c) in per_thread {
        if t == "main" {
            main = c.into();
        } else {
            threads.insert(t, c.into());
        }
    }
    Ok((main, Some(threads)))
}

#[derive(Debug, Serialize)]
pub struct TimelineOut {
    pub events: Vec<ServedEvent>,
    pub limited: bool,
    pub prev_batch: String,
}

/// A `rooms.join` entry (fields in the order a `serde_json::Map` keeps).
#[derive(Debug, Serialize)]
pub struct JoinedRoom {
    account_data: Events<Value>,
    ephemeral: Events<Value>,
    state: Events<Value>,
    summary: Value,
    timeline: TimelineOut,
    unread_notifications: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_thread_notifications: Option<BTreeMap<String, Counts>>,
}

/// A `rooms.leave` entry.
#[derive(Debug, Serialize)]
pub struct LeftRoom {
    account_data: Events<Value>,
    state: Events<Value>,
    timeline: TimelineOut,
}

/// One room of a section: typed (so shared raw event JSON is written as
/// is) or a plain tree (invites, knocks).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RoomEntry {
    Joined(Box<JoinedRoom>),
    Left(Box<LeftRoom>),
    Tree(Value),
}

pub type Section = BTreeMap<String, RoomEntry>;

#[derive(Debug, Default, Serialize)]
pub struct SyncRooms {
    pub invite: Section,
    pub join: Section,
    pub knock: Section,
    pub leave: Section,
}

#[derive(Debug, Default, Serialize)]
struct DeviceLists {
    changed: Vec<String>,
    left: Vec<String>,
}

/// The whole response, written with one `serde_json::to_writer` (no
/// `Value` tree for the top level; fields in `serde_json::Map` order).
#[derive(Debug, Serialize)]
pub struct SyncResponse {
    account_data: Events<Value>,
    device_lists: DeviceLists,
    /// `None` on the cheap path: an absent field means "unchanged" to
    /// clients (matrix-js-sdk, matrix-rust-sdk), while a fixed 0 would make
    /// them upload keys they already have. Key changes poke the user, so
    /// the sync after one is computed and carries the real values.
    #[serde(skip_serializing_if = "Option::is_none")]
    device_one_time_keys_count: Option<crate::keys::KeyCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_unused_fallback_key_types: Option<Vec<String>>,
    next_batch: String,
    presence: Events<Value>,
    rooms: SyncRooms,
    to_device: Events<Value>,
}

/// The response with nothing new: every field clients require, empty.
pub fn empty(next_batch: &StreamToken) -> SyncResponse {
    SyncResponse {
        account_data: Events::default(),
        device_lists: DeviceLists::default(),
        device_one_time_keys_count: None,
        device_unused_fallback_key_types: None,
        next_batch: next_batch.to_string(),
        presence: Events::default(),
        rooms: SyncRooms::default(),
        to_device: Events::default(),
    }
}

/// Stands for the token in the template [`empty_bytes`] is rendered from
/// once; nothing else in the empty response can contain it.
const TOKEN_MARK: &str = "@@next_batch@@";

/// `empty`'s serialised body split around `next_batch`'s value: built once
/// per process from [`empty`] itself, so the cheap path's bytes cannot
/// drift from what the normal path returns for an empty sync.
fn empty_template() -> &'static (Vec<u8>, Vec<u8>) {
    static TEMPLATE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut v = empty(&StreamToken::zero(0));
        v.next_batch = TOKEN_MARK.to_owned();
        // Invariant: plain structs of strings and numbers always serialise.
        let text = serde_json::to_string(&v).unwrap_or_default();
        match text.split_once(TOKEN_MARK) {
            Some((a, b)) => (a.as_bytes().to_vec(), b.as_bytes().to_vec()),
            // Unreachable (the mark is in `text`): fall back to no splice.
            None => (text.into_bytes(), Vec::new()),
        }
    })
}

/// The serialised [`empty`] response, byte for byte, without building
/// it: the sync cheap path's body (a token is `s`, digits, `.` and `_`:
/// nothing to escape).
pub fn empty_bytes(next_batch: &StreamToken) -> Vec<u8> {
    use std::io::Write;
    let (head, tail) = empty_template();
    let mut out = Vec::with_capacity(head.len() + tail.len() + 16 * next_batch.len().max(1));
    out.extend_from_slice(head);
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "{next_batch}");
    out.extend_from_slice(tail);
    out
}

/// Timeline, state and `prev_batch` of a joined or left room.
struct Body {
    timeline: Vec<ServedEvent>,
    limited: bool,
    prev_batch: String,
    state: Vec<Value>,
    members_changed: bool,
}

/// The room's timeline up to `upper` and the state at its start: all of
/// it when `full`, else what changed since `ctx.since` when the timeline
/// does not follow on from it (spec "Syncing": `state` is the state up to
/// the start of the timeline, never including the timeline's own events).
/// `vis`: the user's membership may have changed within the timeline, so
/// history visibility must be checked (a user joined throughout sees every
/// event); hidden events leave a gap, so `state` starts at the first event
/// shown (e.g. the state before the user's join in a `joined` room).
async fn body(
    ctx: &SyncContext,
    cache: &SyncCache,
    room: &OwnedRoomId,
    upper: &StreamToken,
    full: bool,
    vis: bool,
) -> Result<Body, SyncError> {
    let n = ctx.current.len();
    let zero = StreamToken::zero(n);
    let lower = ctx.since.as_ref().unwrap_or(&zero);
    let f = &ctx.filter;
    let mut slice = timeline::select(
        &ctx.db,
        cache,
        room,
        lower,
        upper,
        f.timeline_limit(),
        &f.room.timeline,
    )
    .await?;
    if vis {
        let (kept, hidden) = serve::visible(
            &ctx.db,
            ctx.user.as_str(),
            std::mem::take(&mut slice.events),
        )
        .await?;
        slice.events = kept;
        slice.gap |= hidden;
    }
    let start = match slice.events.first() {
        Some(first) => timeline::with_persisted(upper, first.shard, first.pos - 1),
        None => {
            let s = shard_for_room(room, n.max(1));
            timeline::with_persisted(upper, s, upper.persisted(s))
        }
    };
    let lazy = f.lazy_load_members();
    let senders: HashSet<&str> = slice
        .events
        .iter()
        .map(|e| e.sender.as_str())
        .chain([ctx.user.as_str()])
        .collect();
    let mut wanted: Vec<String> = Vec::new();
    // The state delta against `since` is needed after a gap, and after a
    // resolution that changed state the timeline does not show.
    let delta = slice.gap || slice.resolved;
    if full || delta || (lazy && !slice.events.is_empty()) {
        let start_state = timeline::state_at(&ctx.db, cache, room, &start).await?;
        let (base, end_state): (Option<Rc<StateMap>>, Rc<StateMap>) = if full || delta {
            let base = match (&ctx.since, full) {
                (Some(since), false) => {
                    Some(timeline::state_at(&ctx.db, cache, room, since).await?)
                }
                _ => None,
            };
            (base, timeline::state_at(&ctx.db, cache, room, upper).await?)
        } else {
            (None, start_state.clone())
        };
        let in_timeline: HashSet<&str> = slice.events.iter().map(|e| e.event_id.as_str()).collect();
        let keys: BTreeSet<&(String, String)> =
            start_state.keys().chain(end_state.keys()).collect();
        for k in keys {
            // The value at the timeline start, unless a later value is not
            // in the timeline (hidden by history visibility or the filter):
            // then that one, or the client would never learn it (Synapse's
            // "start ∪ end − previous − timeline"). Never a timeline event.
            let id = match end_state.get(k) {
                Some(e) if !in_timeline.contains(e.as_str()) => Some(e),
                _ => start_state.get(k),
            };
            let Some(id) = id.filter(|id| !in_timeline.contains(id.as_str())) else {
                continue;
            };
            let in_scope = full || (delta && base.as_ref().is_some_and(|b| b.get(k) != Some(id)));
            let include = if lazy && k.0 == "m.room.member" {
                // Spec "Lazy-loading room members": only the timeline's
                // senders (and the user) — but those even without a gap
                // (resent each time: we do not track what a device has).
                senders.contains(k.1.as_str())
            } else {
                in_scope
            };
            if include {
                wanted.push(id.clone());
            }
        }
    }
    let by_id = serve::state_bases(&ctx.db, cache, &wanted).await?;
    let state_events: Vec<Arc<Value>> = wanted
        .iter()
        .filter_map(|id| by_id.get(id).cloned())
        .filter(|e| f.room.state.allows_event(room.as_str(), e))
        .collect();
    let members_changed = state_events
        .iter()
        .map(|e| e["type"].as_str())
        .chain(slice.events.iter().map(|e| Some(e.event_type.as_str())))
        .any(|t| t == Some("m.room.member"));
    let tl = serve::timeline_bases(&ctx.db, cache, &slice.events).await?;
    let prev_batch = match slice.events.first() {
        Some(first) => timeline::with_persisted(&ctx.current, first.shard, first.pos - 1),
        None => {
            let s = shard_for_room(room, n.max(1));
            timeline::with_persisted(&ctx.current, s, upper.persisted(s))
        }
    };
    Ok(Body {
        timeline: serve::personalize_timeline(ctx, &slice.events, &tl).await?,
        limited: slice.limited,
        prev_batch: prev_batch.to_string(),
        state: serve::personalize(ctx, &state_events).await?,
        members_changed,
    })
}

/// `summary` (spec "Room summary"): heroes and member counts from the
/// current state table.
async fn summary(ctx: &SyncContext, room: &RoomId) -> Result<Value, SyncError> {
    let counts = ctx
        .db
        .query_one(
            "SELECT count(*) FILTER (WHERE membership = 'join'), \
             count(*) FILTER (WHERE membership = 'invite') \
             FROM current_state WHERE room_id = $1 AND type = 'm.room.member'",
            &[&room.as_str()],
        )
        .await?;
    let heroes = ctx
        .db
        .query(
            "SELECT state_key FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND membership IN ('join', 'invite') \
             AND state_key <> $2 ORDER BY state_key LIMIT 5",
            &[&room.as_str(), &ctx.user.as_str()],
        )
        .await?;
    let heroes: Vec<String> = heroes.iter().map(|r| r.get(0)).collect::<Result<_, _>>()?;
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": counts.get::<i64>(0)?,
        "m.invited_member_count": counts.get::<i64>(1)?,
    }))
}

/// A `rooms.join` entry; `None` in an incremental sync with nothing to say.
/// `membership_changed`: the user's member event changed since the token
/// (history visibility is then checked; always in an initial sync).
pub async fn joined(
    ctx: &SyncContext,
    cache: &SyncCache,
    room: &OwnedRoomId,
    newly_joined: bool,
    membership_changed: bool,
) -> Result<Option<RoomEntry>, SyncError> {
    let full = ctx.is_initial() || ctx.full_state || newly_joined;
    let vis = ctx.is_initial() || newly_joined || membership_changed;
    let b = body(ctx, cache, room, &ctx.current, full, vis).await?;
    let ephemeral = extensions::room_ephemeral(ctx, room).await?;
    let account_data = extensions::room_account_data(ctx, room).await?;
    if !full
        && b.timeline.is_empty()
        && b.state.is_empty()
        && ephemeral.is_empty()
        && account_data.is_empty()
    {
        return Ok(None);
    }
    let (unread_notifications, unread_thread_notifications) = unread(ctx, room).await?;
    let summary = if full || b.members_changed {
        summary(ctx, room).await?
    } else {
        json!({})
    };
    Ok(Some(RoomEntry::Joined(Box::new(JoinedRoom {
        account_data: Events {
            events: account_data,
        },
        ephemeral: Events { events: ephemeral },
        state: Events { events: b.state },
        summary,
        timeline: TimelineOut {
            events: b.timeline,
            limited: b.limited,
            prev_batch: b.prev_batch,
        },
        unread_notifications,
        unread_thread_notifications,
    }))))
}

/// A `rooms.leave` entry: the timeline up to the user's leave (or ban).
pub async fn left(
    ctx: &SyncContext,
    cache: &SyncCache,
    room: &OwnedRoomId,
    leave: &MemberChange,
    full: bool,
) -> Result<RoomEntry, SyncError> {
    let upper = timeline::with_persisted(&ctx.current, leave.shard, leave.pos);
    let b = body(ctx, cache, room, &upper, full || ctx.is_initial(), true).await?;
    let account_data = extensions::room_account_data(ctx, room).await?;
    Ok(RoomEntry::Left(Box::new(LeftRoom {
        account_data: Events {
            events: account_data,
        },
        state: Events { events: b.state },
        timeline: TimelineOut {
            events: b.timeline,
            limited: b.limited,
            prev_batch: b.prev_batch,
        },
    })))
}

fn stripped(e: &Value) -> Value {
    json!({
        "type": e["type"],
        "state_key": e["state_key"],
        "content": e["content"],
        "sender": e["sender"],
    })
}

/// The stripped state an invitee or knocker sees (spec "Stripped state"),
/// ending with their own member event in full.
async fn stripped_state(
    ctx: &SyncContext,
    cache: &SyncCache,
    change: &MemberChange,
) -> Result<Vec<Value>, SyncError> {
    let own = serve::state_bases(&ctx.db, cache, std::slice::from_ref(&change.event_id))
        .await?
        .remove(&change.event_id);
    let state = match change.snapshot_id {
        Some(id) => timeline::snapshot(&ctx.db, cache, id).await?,
        None => Rc::new(StateMap::new()),
    };
    let inviter = own
        .as_ref()
        .and_then(|e| e["sender"].as_str())
        .map(str::to_owned);
    let mut ids: Vec<String> = STRIPPED_TYPES
        .iter()
        .filter_map(|t| state.get(&((*t).to_owned(), String::new())).cloned())
        .collect();
    if let Some(inv) = inviter.filter(|i| i != ctx.user.as_str()) {
        if let Some(id) = state.get(&("m.room.member".to_owned(), inv)) {
            ids.push(id.clone());
        }
    }
    let by_id: HashMap<String, Arc<Value>> = serve::state_bases(&ctx.db, cache, &ids).await?;
    let mut out: Vec<Value> = ids
        .iter()
        .filter_map(|id| by_id.get(id))
        .map(|e| stripped(e))
        .collect();
    if let Some(own) = own {
        out.extend(serve::personalize(ctx, &[own]).await?);
    }
    Ok(out)
}

/// A `rooms.invite` entry.
pub async fn invited(
    ctx: &SyncContext,
    cache: &SyncCache,
    change: &MemberChange,
) -> Result<Value, SyncError> {
    Ok(json!({"invite_state": {"events": stripped_state(ctx, cache, change).await?}}))
}

/// A `rooms.knock` entry.
pub async fn knocked(
    ctx: &SyncContext,
    cache: &SyncCache,
    change: &MemberChange,
) -> Result<Value, SyncError> {
    Ok(json!({"knock_state": {"events": stripped_state(ctx, cache, change).await?}}))
}

/// Assembles the top-level response.
pub async fn assemble(ctx: &SyncContext, rooms: SyncRooms) -> Result<SyncResponse, SyncError> {
    let mut out = empty(&ctx.current);
    out.rooms = rooms;
    out.account_data.events = extensions::account_data(ctx).await?;
    out.presence.events = extensions::presence(ctx).await?;
    out.to_device.events = extensions::to_device(ctx).await?;
    let (counts, fallback) = extensions::key_counts(ctx).await?;
    out.device_one_time_keys_count = Some(counts);
    let (changed, left) = extensions::device_lists(ctx).await?;
    out.device_lists.changed = changed;
    out.device_lists.left = left;
    out.device_unused_fallback_key_types = Some(fallback);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ShardPos;

    #[test]
    fn empty_bytes_match_the_serialised_empty_response() {
        let toks = [
            StreamToken::zero(0),
            StreamToken::zero(1),
            StreamToken::from_positions(vec![
                ShardPos {
                    persisted: 105,
                    ephemeral: 1_732_480_000_123,
                },
                ShardPos {
                    persisted: 88,
                    ephemeral: 0,
                },
            ]),
        ];
        for t in &toks {
            // What `assemble` returns for a sync with nothing in it.
            let expected = serde_json::to_vec(&empty(t)).unwrap();
            // The shape clients rely on, unchanged.
            let old = json!({
                "next_batch": t.to_string(),
                "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
                "account_data": {"events": []},
                "presence": {"events": []},
                "to_device": {"events": []},
                "device_lists": {"changed": [], "left": []},
            });
            assert_eq!(serde_json::from_slice::<Value>(&expected).unwrap(), old);
            assert_eq!(
                String::from_utf8(empty_bytes(t)).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }
}

//! Notification counts and `GET /notifications` (client-server API "Push
//! Notifications" → "Receiving notifications", "Threading" → "Read
//! receipts and notifications"), read from `push_actions` (a row per
//! event and action set, its users in an array: migration 33).
//!
//! A notification is read when the user's latest `m.read` or
//! `m.read.private` receipt is at or after it: the unthreaded receipt
//! covers every thread, a threaded one (`thread_id` `main` or a root id)
//! only its thread. Counts are the unread rows, so a receipt "resets" them
//! with no write of its own, and an older receipt never raises them.

use std::collections::{BTreeMap, HashMap};

use ruma::OwnedUserId;
use serde_json::{json, Value};

use crate::db::{DbError, Pool};
use crate::ephemeral::{on_shard, EphError};
use crate::mesh::{shard_for_room, MeshEndpoint};
use crate::rooms::serve::{client_events_by_id, Viewer};

use super::unread::Unread;

/// `notification_count` and `highlight_count` of one thread (or room).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.notifications += o.notifications;
        self.highlights += o.highlights;
    }
}

/// The latest receipt per thread (`""` = unthreaded) and room, as an
/// `events.stream_ordering` (the order receipts are compared in).
const RECEIPT_BOUNDS: &str = "SELECT r.room_id, r.thread_id, max(e.stream_ordering) \
     FROM receipts r JOIN events e ON e.event_id = r.event_id \
     WHERE r.user_id = $1 AND r.room_id = ANY($2) \
     AND r.receipt_type IN ('m.read', 'm.read.private') GROUP BY r.room_id, r.thread_id";

type Bounds = HashMap<(String, String), i64>;

async fn bounds(db: &Pool, user: &str, rooms: &[String]) -> Result<Bounds, DbError> {
    let rows = db.query(RECEIPT_BOUNDS, &[&user, &rooms]).await?;
    let mut out = HashMap::new();
    for r in rows {
        let pos: Option<i64> = r.get(2)?;
        out.insert((r.get(0)?, r.get(1)?), pos.unwrap_or(-1));
    }
    Ok(out)
}

fn read_upto(b: &Bounds, room: &str, thread: &str) -> i64 {
    let get = |t: &str| {
        b.get(&(room.to_owned(), t.to_owned()))
            .copied()
            .unwrap_or(-1)
    };
    get("").max(get(thread))
}

/// The user's unread counts in `room`, per thread (`main` for the main
/// timeline); threads with nothing unread are absent.
pub async fn room_counts(
    db: &Pool,
    user: &str,
    room: &str,
) -> Result<BTreeMap<String, Counts>, DbError> {
    Ok(room_unread(db, user, room).await?.counts)
}

/// [`room_counts`] with the receipt bounds they were counted against (what
/// `push::unread` needs to add later notifications).
pub async fn room_unread(db: &Pool, user: &str, room: &str) -> Result<Unread, DbError> {
    let rooms = [room.to_owned()];
    let b = bounds(db, user, &rooms).await?;
    let floor = read_upto(&b, room, "");
    let rows = db
        .query(
            "SELECT thread_id, stream_ordering, highlight FROM push_actions \
             WHERE room_id = $2 AND stream_ordering > $3 AND $1 = ANY(users)",
            &[&user, &room, &floor],
        )
        .await?;
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for r in rows {
        let thread: String = r.get(0)?;
        let pos: i64 = r.get(1)?;
        let highlight: bool = r.get(2)?;
        if pos <= read_upto(&b, room, &thread) {
            continue;
        }
        let c = out.entry(thread).or_default();
        c.notifications += 1;
        c.highlights += u64::from(highlight);
    }
    let read = b.into_iter().map(|((_, t), pos)| (t, pos)).collect();
    Ok(Unread { counts: out, read })
}

/// All unread notifications of the user in `room` (the push payload's
/// `counts.unread`).
pub async fn room_total(db: &Pool, user: &str, room: &str) -> Result<i64, DbError> {
    let total = room_counts(db, user, room)
        .await?
        .values()
        .map(|c| c.notifications)
        .sum::<u64>();
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// Counts for `/sync`, read on the room's owner shard once every event up
/// to the sync's position there (`upto`) has been evaluated: counts are
/// never older than the timeline they come with.
pub async fn for_sync(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    room: ruma::OwnedRoomId,
    upto: impl Fn(usize) -> i64,
) -> Result<BTreeMap<String, Counts>, EphError> {
    let owner = shard_for_room(&room, mesh.n_shards());
    let upto = upto(owner);
    on_shard(mesh, owner, move |state| async move {
        super::engine::caught_up(&room, upto).await;
        let cache = super::unread::local();
        if let Some(counts) = cache.get(room.as_str(), user.as_str()) {
            return Ok(counts);
        }
        let epoch = cache.epoch();
        let unread = room_unread(&state.db, user.as_str(), room.as_str()).await?;
        let counts = unread.counts.clone();
        cache.put(room.as_str(), user.as_str(), unread, epoch);
        Ok(counts)
    })
    .await
}

/// One page of `GET /notifications`, newest first; `from` is the previous
/// page's `next_token`.
pub struct Page {
    pub notifications: Vec<Value>,
    pub next_token: Option<String>,
}

/// `GET /notifications` for `user`.
pub async fn notifications(
    db: &Pool,
    user: &str,
    from: Option<i64>,
    limit: i64,
    only_highlight: bool,
) -> Result<Page, EphError> {
    let rows = db
        .query(
            "SELECT id, room_id, event_id, stream_ordering, thread_id, actions, ts \
             FROM push_actions WHERE users @> ARRAY[$1::text] AND ($2::int8 IS NULL OR id < $2) \
             AND (NOT $3 OR highlight) ORDER BY id DESC LIMIT $4",
            &[&user, &from, &only_highlight, &(limit + 1)],
        )
        .await?;
    struct Row {
        id: i64,
        room: String,
        event: String,
        pos: i64,
        thread: String,
        actions: Value,
        ts: i64,
    }
    let mut list = Vec::with_capacity(rows.len());
    for r in &rows {
        list.push(Row {
            id: r.get(0)?,
            room: r.get(1)?,
            event: r.get(2)?,
            pos: r.get(3)?,
            thread: r.get(4)?,
            actions: r.get(5)?,
            ts: r.get(6)?,
        });
    }
    let more = list.len() as i64 > limit;
    list.truncate(usize::try_from(limit).unwrap_or(0));
    let mut rooms: Vec<String> = list.iter().map(|r| r.room.clone()).collect();
    rooms.sort();
    rooms.dedup();
    let b = bounds(db, user, &rooms).await?;
    let ids: Vec<String> = list.iter().map(|r| r.event.clone()).collect();
    let viewer = Viewer {
        user_id: user.to_owned(),
        device_id: None,
    };
    let events: HashMap<String, Value> = client_events_by_id(db, &ids, Some(&viewer))
        .await?
        .into_iter()
        .filter_map(|e| Some((e["event_id"].as_str()?.to_owned(), e)))
        .collect();
    let mut out = Vec::with_capacity(list.len());
    for r in &list {
        let Some(mut event) = events.get(&r.event).cloned() else {
            continue;
        };
        // ClientEventWithoutRoomId: the room is the notification's.
        if let Some(o) = event.as_object_mut() {
            o.remove("room_id");
        }
        out.push(json!({
            "actions": r.actions,
            "event": event,
            "read": r.pos <= read_upto(&b, &r.room, &r.thread),
            "room_id": r.room,
            "ts": r.ts,
        }));
    }
    Ok(Page {
        notifications: out,
        next_token: if more {
            list.last().map(|r| r.id.to_string())
        } else {
            None
        },
    })
}

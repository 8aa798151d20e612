//! Rooms joined with partial state (MSC3706/MSC3902 "faster joins";
//! server-server "Joining Rooms", `omit_members`): the resident server's
//! `send_join` answer left the members out, so our state of the room lacks
//! them until the background resync (`federation::resync`) stores the full
//! state at our join (`Rooms::complete_partial_state`).
//!
//! `partial_state_rooms` is the durable truth (written before the join
//! commits, deleted with the full state); the owner shard mirrors its
//! rows in a thread-local ([`servers`]) for the write path (receiving
//! events, choosing destinations), filled at join and at start
//! ([`load_owned`]). A process-wide count lets `/sync` skip the table
//! when no room is partial.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use ruma::{OwnedEventId, OwnedRoomId};

use crate::db::Pool;

use super::RoomError;

thread_local! {
    /// Partial rooms owned by this shard → their `servers_in_room`.
    static PARTIAL: RefCell<HashMap<OwnedRoomId, Vec<String>>> = RefCell::new(HashMap::new());
}

/// Partial rooms in the whole process (all shards).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// A row of `partial_state_rooms`.
#[derive(Debug, Clone)]
pub struct PartialRoom {
    pub room_id: OwnedRoomId,
    pub join_event_id: OwnedEventId,
    pub servers: Vec<String>,
}

/// Marks `room` partial on this (its owner) shard.
pub fn mark(room: &OwnedRoomId, servers: Vec<String>) {
    SEEN.store(true, Ordering::Relaxed);
    let new = PARTIAL.with(|p| p.borrow_mut().insert(room.clone(), servers).is_none());
    if new {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forgets the partial mark of `room` on this shard.
pub fn unmark(room: &OwnedRoomId) {
    if PARTIAL.with(|p| p.borrow_mut().remove(room).is_some()) {
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `servers_in_room` of a partial room owned by this shard; `None`: the
/// room has its full state.
pub fn servers(room: &OwnedRoomId) -> Option<Vec<String>> {
    PARTIAL.with(|p| p.borrow().get(room).cloned())
}

/// Whether any room of the process is partial (cheap, for `/sync`).
pub fn any() -> bool {
    COUNT.load(Ordering::Relaxed) > 0
}

/// A room was partial in this process since it started (or is): `/sync`
/// asks the tables only then. (A resync finished before a restart is not
/// seen by a `since` from before it: that sync gets the room as it is.)
static SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn any_since_start() -> bool {
    any() || SEEN.load(Ordering::Relaxed)
}

/// The partial rooms among `rooms` (one query; none when [`any`] is false).
pub async fn among(
    db: &Pool,
    rooms: &[String],
) -> Result<std::collections::HashSet<String>, RoomError> {
    if !any() || rooms.is_empty() {
        return Ok(Default::default());
    }
    let rows = db
        .query(
            "SELECT room_id FROM partial_state_rooms WHERE room_id = ANY($1)",
            &[&rooms.to_vec()],
        )
        .await?;
    let mut out = std::collections::HashSet::new();
    for r in rows {
        out.insert(r.get::<String>(0)?);
    }
    Ok(out)
}

/// Whether `room` is partial (any shard; reads the table).
pub async fn is_partial(db: &Pool, room: &OwnedRoomId) -> Result<bool, RoomError> {
    if !any() {
        return Ok(false);
    }
    Ok(db
        .query_opt(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = $1",
            &[&room.as_str()],
        )
        .await?
        .is_some())
}

/// Waits (polling the table, at most `bound`) until `room` has its full
/// state; `false`: still partial after `bound`.
pub async fn wait_full(
    db: &Pool,
    room: &OwnedRoomId,
    bound: std::time::Duration,
) -> Result<bool, RoomError> {
    let start = std::time::Instant::now();
    while is_partial(db, room).await? {
        if start.elapsed() >= bound {
            return Ok(false);
        }
        monoio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(true)
}

/// The row of `room`, if partial.
pub async fn load(db: &Pool, room: &OwnedRoomId) -> Result<Option<PartialRoom>, RoomError> {
    let row = db
        .query_opt(
            "SELECT join_event_id, servers FROM partial_state_rooms WHERE room_id = $1",
            &[&room.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let join: String = row.get(0)?;
    Ok(Some(PartialRoom {
        room_id: room.clone(),
        join_event_id: OwnedEventId::try_from(join)
            .map_err(|e| RoomError::Internal(format!("partial room join id: {e}")))?,
        servers: row.get(1)?,
    }))
}

/// At start: every partial room whose owner is this shard (`owned`),
/// marked here, returned for the resync to resume.
pub async fn load_owned(
    db: &Pool,
    owned: impl Fn(&OwnedRoomId) -> bool,
) -> Result<Vec<OwnedRoomId>, RoomError> {
    let rows = db
        .query("SELECT room_id, servers FROM partial_state_rooms", &[])
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let Ok(room) = OwnedRoomId::try_from(r.get::<String>(0)?) else {
            continue;
        };
        if owned(&room) {
            mark(&room, r.get(1)?);
            out.push(room);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_counts_once_per_room() {
        let room = OwnedRoomId::try_from("!partial:test").unwrap();
        let before = COUNT.load(Ordering::Relaxed);
        mark(&room, vec!["a".into()]);
        mark(&room, vec!["a".into(), "b".into()]);
        assert_eq!(COUNT.load(Ordering::Relaxed), before + 1);
        assert_eq!(servers(&room).map(|s| s.len()), Some(2));
        unmark(&room);
        unmark(&room);
        assert_eq!(COUNT.load(Ordering::Relaxed), before);
        assert!(servers(&room).is_none());
    }
}

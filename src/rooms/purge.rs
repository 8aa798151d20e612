//! Deleting rooms and purging history for the admin API (Synapse's
//! `DELETE /_synapse/admin/v1|v2/rooms/{roomId}` and
//! `POST /_synapse/admin/v1/purge_history/{roomId}`). The rooms module is
//! the one writer of room history, so these erasures live here and run on
//! the room's owner shard, under the room's write slot, evicting that
//! shard's caches of the room.
//!
//! A deletion first makes every local member leave (real `m.room.member`
//! events: other servers and the members' clients learn it as a leave),
//! drops the room's local aliases and its directory entry, optionally
//! blocks it (no local user may join again), then, with `purge`, erases
//! its rows. The federation outbox is left alone so the leaves still
//! reach the other servers.
//!
//! A history purge deletes the room's non-state events older than a point
//! (an event or a timestamp), remote ones only unless `delete_local_events`;
//! state events (the state of later events rests on them) and the room's
//! forward extremities are kept, as in Synapse.

use std::rc::Rc;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Value};

use super::client::{on_owner, set_membership};
use super::service::Rooms;
use super::{admin, alias, RoomError};
use crate::db::Pool;
use crate::mesh::MeshEndpoint;
use crate::primitives::unix_ms_i64;

/// What `DELETE /rooms/{roomId}` answers (Synapse's `shutdown_room`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ShutdownReport {
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    /// hearth never makes a replacement room (Synapse's `new_room_user_id`).
    pub new_room_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeleteOptions {
    pub block: bool,
    pub purge: bool,
    /// Who asked (recorded with a block).
    pub requester: OwnedUserId,
}

/// Deletes a room as [`DeleteOptions`] say. An unknown room can only be
/// blocked (as Synapse allows, to pre-empt joins).
pub async fn delete_room(
    mesh: &MeshEndpoint,
    db: &Pool,
    server_name: &str,
    room_id: &OwnedRoomId,
    opts: DeleteOptions,
) -> Result<ShutdownReport, RoomError> {
    let known = admin::exists(db, room_id.as_str()).await?;
    if !known && !opts.block {
        return Err(RoomError::NotFound(format!("Unknown room {room_id}")));
    }
    if opts.block {
        block(db, room_id.as_str(), opts.requester.as_str()).await?;
    }
    let mut report = ShutdownReport::default();
    if !known {
        return Ok(report);
    }
    for member in admin::local_members(db, server_name, room_id.as_str()).await? {
        let Ok(user) = UserId::parse(member.as_str()) else {
            report.failed_to_kick_users.push(member);
            continue;
        };
        // The member leaves by itself: no power level can refuse it.
        let left = set_membership(
            mesh,
            room_id.clone(),
            user.clone(),
            user.as_str(),
            "leave",
            None,
        )
        .await;
        match left {
            Ok(_) => report.kicked_users.push(member),
            Err(e) => {
                tracing::warn!(room = %room_id, user = %member, error = %e, "could not remove a member of a deleted room");
                report.failed_to_kick_users.push(member);
            }
        }
    }
    for a in alias::for_room(db, room_id).await? {
        if let Ok(parsed) = alias::parse(&a) {
            alias::delete(db, &parsed, room_id).await?;
        }
        report.local_aliases.push(a);
    }
    super::directory::set_visibility(db, room_id, false).await?;
    if opts.purge {
        let room = room_id.clone();
        on_owner(mesh, room_id, move |rooms| async move {
            rooms.purge_room(&room).await
        })
        .await?;
    }
    tracing::info!(room = %room_id, purge = opts.purge, block = opts.block, "deleted room");
    Ok(report)
}

/// Blocks `room_id` for local joins.
pub async fn block(db: &Pool, room_id: &str, by: &str) -> Result<(), RoomError> {
    db.execute(
        "INSERT INTO blocked_rooms (room_id, user_id, created_ts) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id) DO NOTHING",
        &[&room_id, &by, &unix_ms_i64()],
    )
    .await?;
    Ok(())
}

pub async fn is_blocked(db: &Pool, room_id: &str) -> Result<bool, RoomError> {
    Ok(db
        .query_opt(
            "SELECT 1::int8 FROM blocked_rooms WHERE room_id = $1",
            &[&room_id],
        )
        .await?
        .is_some())
}

/// Whether `event_id` is a (non-outlier) event of `room_id`.
pub async fn event_in_room(db: &Pool, room_id: &str, event_id: &str) -> Result<bool, RoomError> {
    Ok(db
        .query_opt(
            "SELECT 1::int8 FROM events WHERE room_id = $1 AND event_id = $2",
            &[&room_id, &event_id],
        )
        .await?
        .is_some())
}

/// Where a history purge stops (exclusive).
#[derive(Debug, Clone)]
pub enum PurgePoint {
    Event(String),
    Ts(i64),
}

/// Purges history up to `point` on the room's owner shard; returns how
/// many events went.
pub async fn purge_history(
    mesh: &MeshEndpoint,
    room_id: &OwnedRoomId,
    point: PurgePoint,
    delete_local_events: bool,
    server_name: String,
) -> Result<u64, RoomError> {
    let room = room_id.clone();
    on_owner(mesh, room_id, move |rooms| async move {
        rooms
            .purge_history_here(&room, point, delete_local_events, &server_name)
            .await
    })
    .await
}

/// Every row of the room that `purge_room` erases, in an order no
/// constraint objects to. The outbox stays (see the module doc).
const PURGE_ROOM: &[&str] = &[
    "DELETE FROM events WHERE room_id = $1",
    "DELETE FROM graph_events WHERE room_id = $1",
    "DELETE FROM rejected_events WHERE room_id = $1",
    "DELETE FROM redactions WHERE room_id = $1",
    "DELETE FROM txn_ids WHERE room_id = $1",
    "DELETE FROM current_state WHERE room_id = $1",
    "DELETE FROM room_extremities WHERE room_id = $1",
    "DELETE FROM backward_extremities WHERE room_id = $1",
    "DELETE FROM state_snapshot_entries WHERE snapshot_id IN \
     (SELECT snapshot_id FROM state_snapshots WHERE room_id = $1)",
    "DELETE FROM state_snapshots WHERE room_id = $1",
    "DELETE FROM receipts WHERE room_id = $1",
    "DELETE FROM push_actions WHERE room_id = $1",
    "DELETE FROM room_forgotten WHERE room_id = $1",
    "DELETE FROM room_aliases WHERE room_id = $1",
    "DELETE FROM federation_staging WHERE room_id = $1",
    "DELETE FROM partial_state_rooms WHERE room_id = $1",
    "DELETE FROM partial_state_resynced WHERE room_id = $1",
    "DELETE FROM rooms WHERE room_id = $1",
];

/// Deletes the room's non-state events before the point (see the module
/// doc) and what hangs on them, in one statement.
const PURGE_HISTORY: &str = "
WITH point AS (
    SELECT depth, stream_shard, stream_ordering FROM events
    WHERE room_id = $1 AND event_id = $2
), gone AS (
    DELETE FROM events e WHERE e.room_id = $1 AND e.state_key IS NULL
    AND (
        ($2::text IS NOT NULL AND (e.depth, e.stream_shard, e.stream_ordering) <
            (SELECT depth, stream_shard, stream_ordering FROM point))
        OR ($2::text IS NULL AND (e.json ->> 'origin_server_ts')::bigint < $3))
    AND NOT EXISTS (SELECT 1 FROM room_extremities f
        WHERE f.room_id = $1 AND e.event_id = ANY(f.event_ids))
    AND ($4 OR right(e.sender, length($5)) <> $5)
    RETURNING e.event_id
), r AS (
    DELETE FROM redactions WHERE event_id IN (SELECT event_id FROM gone)
), t AS (
    DELETE FROM txn_ids WHERE event_id IN (SELECT event_id FROM gone)
), p AS (
    DELETE FROM push_actions WHERE room_id = $1 AND event_id IN (SELECT event_id FROM gone)
)
SELECT count(*) FROM gone";

impl Rooms {
    /// Erases every row of `room_id` and this shard's cached view of it.
    pub async fn purge_room(self: &Rc<Self>, room_id: &OwnedRoomId) -> Result<(), RoomError> {
        self.check_owner(room_id)?;
        let _guard = self.room_locks.queue(room_id.clone()).await;
        self.pipelines.idle(room_id).await;
        let rid = room_id.as_str();
        let params: [&dyn crate::db::ToSql; 1] = [&rid];
        let statements: Vec<(&str, &[&dyn crate::db::ToSql])> =
            PURGE_ROOM.iter().map(|s| (*s, &params[..])).collect();
        let done = self.db.pipeline_transaction(&statements).await;
        // Committed or not, its unread counts are read again.
        crate::push::unread::local().forget_room(rid);
        done?;
        self.forget_cached(room_id);
        Ok(())
    }

    /// Runs a history purge on this (the owner) shard.
    pub async fn purge_history_here(
        self: &Rc<Self>,
        room_id: &OwnedRoomId,
        point: PurgePoint,
        delete_local_events: bool,
        server_name: &str,
    ) -> Result<u64, RoomError> {
        self.check_owner(room_id)?;
        let _guard = self.room_locks.queue(room_id.clone()).await;
        self.pipelines.idle(room_id).await;
        let (event, ts) = match point {
            PurgePoint::Event(e) => {
                if !event_in_room(&self.db, room_id.as_str(), &e).await? {
                    return Err(RoomError::NotFound("Event not found in this room".into()));
                }
                (Some(e), 0i64)
            }
            PurgePoint::Ts(ts) => (None, ts),
        };
        let suffix = format!(":{server_name}");
        let done = self
            .db
            .query_one(
                PURGE_HISTORY,
                &[
                    &room_id.as_str(),
                    &event,
                    &ts,
                    &delete_local_events,
                    &suffix,
                ],
            )
            .await;
        // Notifications of purged events are gone: counts are read again.
        crate::push::unread::local().forget_room(room_id.as_str());
        let n: i64 = done?.get(0)?;
        // Events of the room may sit in the event cache; a purged one must
        // not be served from it.
        self.events.forget_room(room_id);
        tracing::info!(room = %room_id, events = n, "purged history");
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn forget_cached(&self, room_id: &OwnedRoomId) {
        self.heads.borrow_mut().pop(room_id);
        self.servers.borrow_mut().pop(room_id);
        self.events.forget_room(room_id);
    }
}

/// Status of a deletion or purge, kept so it can be polled by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Delete,
    Purge,
}

impl TaskKind {
    fn as_str(self) -> &'static str {
        match self {
            TaskKind::Delete => "delete",
            TaskKind::Purge => "purge",
        }
    }
}

/// A polled task: Synapse's `delete_status`/`purge_history_status`.
#[derive(Debug, Clone)]
pub struct Task {
    pub task_id: String,
    pub room_id: String,
    /// `scheduled`, `active`, `complete` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub result: Option<Value>,
}

pub async fn create_task(
    db: &Pool,
    task_id: &str,
    kind: TaskKind,
    room_id: &str,
) -> Result<(), RoomError> {
    db.execute(
        "INSERT INTO admin_room_tasks (task_id, kind, room_id, status, created_ts) \
         VALUES ($1, $2, $3, 'active', $4)",
        &[&task_id, &kind.as_str(), &room_id, &unix_ms_i64()],
    )
    .await?;
    Ok(())
}

pub async fn finish_task(
    db: &Pool,
    task_id: &str,
    outcome: Result<Value, String>,
) -> Result<(), RoomError> {
    let (status, result, error) = match outcome {
        Ok(v) => ("complete", Some(v), None),
        Err(e) => ("failed", None, Some(e)),
    };
    db.execute(
        "UPDATE admin_room_tasks SET status = $2, result = $3, error = $4 WHERE task_id = $1",
        &[&task_id, &status, &result, &error],
    )
    .await?;
    Ok(())
}

fn task_of(r: &crate::db::Row) -> Result<Task, RoomError> {
    Ok(Task {
        task_id: r.get(0)?,
        room_id: r.get(1)?,
        status: r.get(2)?,
        error: r.get(3)?,
        result: r.get(4)?,
    })
}

pub async fn get_task(db: &Pool, kind: TaskKind, task_id: &str) -> Result<Option<Task>, RoomError> {
    let row = db
        .query_opt(
            "SELECT task_id, room_id, status, error, result FROM admin_room_tasks \
             WHERE task_id = $1 AND kind = $2",
            &[&task_id, &kind.as_str()],
        )
        .await?;
    row.as_ref().map(task_of).transpose()
}

pub async fn tasks_of_room(
    db: &Pool,
    kind: TaskKind,
    room_id: &str,
) -> Result<Vec<Task>, RoomError> {
    let rows = db
        .query(
            "SELECT task_id, room_id, status, error, result FROM admin_room_tasks \
             WHERE room_id = $1 AND kind = $2 ORDER BY created_ts",
            &[&room_id, &kind.as_str()],
        )
        .await?;
    rows.iter().map(task_of).collect()
}

/// The JSON of a finished deletion's report (stored with its task).
pub fn report_json(r: &ShutdownReport) -> Value {
    json!({
        "kicked_users": r.kicked_users,
        "failed_to_kick_users": r.failed_to_kick_users,
        "local_aliases": r.local_aliases,
        "new_room_id": r.new_room_id,
    })
}

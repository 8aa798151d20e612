//! Event reports: `POST /rooms/{roomId}/report/{eventId}` (client-server
//! API, "Reporting content") stores one; the admin API lists, shows and
//! deletes them in Synapse's shapes. Schema: `migrations/0027_admin_api.sql`.

use serde_json::{json, Value};

use super::RoomError;
use crate::db::{Pool, Row};
use crate::primitives::unix_ms_i64;

/// Stores a report by `user` about `event_id` in `room_id`. The reporter
/// must be joined to the room and the event in it; otherwise the answer
/// is `NotFound`, not revealing whether the event exists (as Synapse).
pub async fn create(
    db: &Pool,
    room_id: &str,
    event_id: &str,
    user: &str,
    reason: Option<String>,
    score: Option<i64>,
) -> Result<(), RoomError> {
    let visible = db
        .query_opt(
            "SELECT 1::int8 FROM events e JOIN current_state m ON m.room_id = e.room_id \
             AND m.type = 'm.room.member' AND m.state_key = $3 AND m.membership = 'join' \
             WHERE e.event_id = $2 AND e.room_id = $1",
            &[&room_id, &event_id, &user],
        )
        .await?;
    if visible.is_none() {
        return Err(RoomError::NotFound(
            "Unable to report event: it does not exist or you aren't able to see it.".into(),
        ));
    }
    db.execute(
        "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, score) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&unix_ms_i64(), &room_id, &event_id, &user, &reason, &score],
    )
    .await?;
    Ok(())
}

/// A report with the reported event's sender and the room's name and
/// canonical alias now.
const SELECT: &str = "SELECT r.id, r.received_ts, r.room_id, r.event_id, r.user_id, r.score, \
     r.reason, e.sender, \
     (SELECT x.json -> 'content' ->> 'alias' FROM current_state s JOIN events x \
        ON x.event_id = s.event_id WHERE s.room_id = r.room_id \
        AND s.type = 'm.room.canonical_alias' AND s.state_key = ''), \
     (SELECT x.json -> 'content' ->> 'name' FROM current_state s JOIN events x \
        ON x.event_id = s.event_id WHERE s.room_id = r.room_id \
        AND s.type = 'm.room.name' AND s.state_key = ''), \
     e.json \
     FROM event_reports r LEFT JOIN events e ON e.event_id = r.event_id";

fn report_of(r: &Row, with_event: bool) -> Result<Value, RoomError> {
    let mut v = json!({
        "id": r.get::<i64>(0)?,
        "received_ts": r.get::<i64>(1)?,
        "room_id": r.get::<String>(2)?,
        "event_id": r.get::<Option<String>>(3)?,
        "user_id": r.get::<String>(4)?,
        "score": r.get::<Option<i64>>(5)?,
        "reason": r.get::<Option<String>>(6)?,
        "sender": r.get::<Option<String>>(7)?,
        "canonical_alias": r.get::<Option<String>>(8)?,
        "name": r.get::<Option<String>>(9)?,
    });
    if with_event {
        let mut event = r.get::<Option<Value>>(10)?.unwrap_or(Value::Null);
        // As Synapse shows it: with `unsigned.age_ts` (when it was sent).
        if let Some(obj) = event.as_object_mut() {
            let ts = obj.get("origin_server_ts").cloned().unwrap_or(Value::Null);
            obj.entry("unsigned")
                .or_insert_with(|| json!({ "age_ts": ts }));
        }
        v["event_json"] = event;
    }
    Ok(v)
}

/// `GET /v1/event_reports`' filters.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: i64,
    pub limit: i64,
    /// `dir=f`: oldest first; Synapse's default is newest first.
    pub forwards: bool,
    pub room_id: Option<String>,
    pub user_id: Option<String>,
}

pub async fn list(db: &Pool, q: &ReportQuery) -> Result<(Vec<Value>, i64), RoomError> {
    let filter = "($1::text IS NULL OR r.room_id = $1) AND ($2::text IS NULL OR r.user_id = $2)";
    let dir = if q.forwards { "ASC" } else { "DESC" };
    let rows = db
        .query(
            &format!("{SELECT} WHERE {filter} ORDER BY r.received_ts {dir}, r.id {dir} LIMIT $3 OFFSET $4"),
            &[&q.room_id, &q.user_id, &q.limit, &q.from],
        )
        .await?;
    let reports = rows
        .iter()
        .map(|r| report_of(r, false))
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM event_reports r WHERE {filter}"),
            &[&q.room_id, &q.user_id],
        )
        .await?
        .get(0)?;
    Ok((reports, total))
}

/// One report with the reported event (`event_json`, federation format).
pub async fn get(db: &Pool, id: i64) -> Result<Option<Value>, RoomError> {
    let row = db
        .query_opt(&format!("{SELECT} WHERE r.id = $1"), &[&id])
        .await?;
    row.as_ref().map(|r| report_of(r, true)).transpose()
}

/// Returns whether it existed.
pub async fn delete(db: &Pool, id: i64) -> Result<bool, RoomError> {
    Ok(db
        .execute("DELETE FROM event_reports WHERE id = $1", &[&id])
        .await?
        > 0)
}

//! `POST /rooms/{roomId}/forget` and the forgotten-room lookups `/sync`
//! uses to leave forgotten rooms out.
//!
//! A forget is stored with the user's member event at that moment; it
//! holds while that is still their current member event, so joining
//! again un-forgets the room without any write (Synapse resets `forgotten`
//! on a new membership the same way). Forgotten rooms also close the
//! departed-user access to history (`rooms::visibility::check_access`).

use std::collections::HashSet;

use crate::db::Pool;

use super::history::HistoryError;
use super::RoomError;

/// Forgets the room for `user`. Only once they are out of it: still
/// joined, invited or knocking is 400 `M_UNKNOWN` (as Synapse).
pub async fn forget(db: &Pool, room_id: &str, user: &str) -> Result<(), HistoryError> {
    let row = db
        .query_opt(
            "SELECT membership, event_id FROM current_state WHERE room_id = $1 \
             AND type = 'm.room.member' AND state_key = $2",
            &[&room_id, &user],
        )
        .await?;
    let (membership, member_event): (Option<String>, String) = match row {
        Some(r) => (r.get(0)?, r.get(1)?),
        None => (None, String::new()),
    };
    if let Some(m @ ("join" | "invite" | "knock")) = membership.as_deref() {
        return Err(HistoryError::BadRequest(format!(
            "{user} is still in room {room_id} ({m}): leave it first"
        )));
    }
    db.execute(
        "INSERT INTO room_forgotten (user_id, room_id, member_event_id) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, room_id) DO UPDATE SET member_event_id = excluded.member_event_id",
        &[&user, &room_id, &member_event],
    )
    .await?;
    Ok(())
}

const FORGOTTEN_SQL: &str = "SELECT f.room_id FROM room_forgotten f \
     LEFT JOIN current_state c ON c.room_id = f.room_id \
          AND c.type = 'm.room.member' AND c.state_key = f.user_id \
     WHERE f.user_id = $1 AND f.member_event_id = coalesce(c.event_id, '')";

/// Whether `user` has forgotten `room_id` (and not rejoined since).
pub async fn is_forgotten(db: &Pool, user: &str, room_id: &str) -> Result<bool, RoomError> {
    let sql = format!("{FORGOTTEN_SQL} AND f.room_id = $2");
    Ok(db.query_opt(&sql, &[&user, &room_id]).await?.is_some())
}

/// Every room `user` has forgotten (and not rejoined since).
pub async fn forgotten_rooms(db: &Pool, user: &str) -> Result<HashSet<String>, RoomError> {
    let rows = db.query(FORGOTTEN_SQL, &[&user]).await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(RoomError::from))
        .collect()
}

//! Our users' device list changes told to the other servers (server-server
//! "Device Management": `m.device_list_update`; "End-to-End Encryption":
//! `m.signing_key_update`).
//!
//! Each local user has a stream (`device_list_streams`): every update
//! takes the next `stream_id` and names the previous one in `prev_id`, so
//! a server that missed one sees the gap and resyncs with
//! `/user/devices` (whose `stream_id` is this same counter). The updates
//! are rows of `federation_edu_outbox`, one per server sharing a joined
//! room with the user, written by one statement that can join the
//! transaction of the change itself ([`DEVICE_UPDATE_SQL`]); the sender
//! deletes a row only once its server answered 200.

use serde_json::Value;

use super::KeysError;
use crate::db::{Pool, QueryResult, ToSql};

/// The servers (ours included) of the users sharing a joined room with
/// `$1`: the destinations of `$1`'s device list updates.
macro_rules! peer_servers {
    () => {
        "SELECT DISTINCT \
           substring(b.state_key from position(':' in b.state_key) + 1) AS server \
         FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
         WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join' \
           AND b.type = 'm.room.member' AND b.membership = 'join'"
    };
}

/// Takes the next stream id of `$1` (only if `$6`) and queues an
/// `m.device_list_update` of device `$2` for every other server sharing
/// a room: its keys (`$3` if given, else as stored), display name, or
/// `deleted` when the device is gone. `$4` now, `$5` our server name.
/// Returns the destinations (to kick after COMMIT). Inside a transaction
/// it sees the statements before it (an upload's new keys).
pub const DEVICE_UPDATE_SQL: &str = concat!(
    "WITH s AS ( \
       INSERT INTO device_list_streams AS t (user_id, stream_id) SELECT $1, 1 WHERE $6 \
       ON CONFLICT (user_id) DO UPDATE SET stream_id = t.stream_id + 1 \
       RETURNING stream_id), \
     dev AS ( \
       SELECT d.display_name, COALESCE($3::jsonb, k.key_json::jsonb) AS keys \
       FROM devices d LEFT JOIN e2e_device_keys k USING (user_id, device_id) \
       WHERE d.user_id = $1 AND d.device_id = $2), \
     dest AS (",
    peer_servers!(),
    ") \
     INSERT INTO federation_edu_outbox (destination, edu_type, content, queued_ts) \
     SELECT dest.server, 'm.device_list_update', \
       jsonb_build_object('user_id', $1::text, 'device_id', $2::text, \
         'stream_id', s.stream_id, \
         'prev_id', CASE WHEN s.stream_id > 1 THEN jsonb_build_array(s.stream_id - 1) \
                    ELSE '[]'::jsonb END, \
         'deleted', NOT EXISTS (SELECT 1 FROM dev)) \
       || COALESCE((SELECT jsonb_build_object('device_display_name', dev.display_name) \
                    FROM dev WHERE dev.display_name IS NOT NULL), '{}'::jsonb) \
       || COALESCE((SELECT jsonb_build_object('keys', dev.keys) \
                    FROM dev WHERE dev.keys IS NOT NULL), '{}'::jsonb), \
       $4 \
     FROM s, dest WHERE dest.server <> $5 \
     RETURNING destination"
);

/// Queues `m.signing_key_update` `$2` (content) of `$1` for every other
/// server sharing a room; `$3` now, `$4` our server name.
const SIGNING_UPDATE_SQL: &str = concat!(
    "WITH dest AS (",
    peer_servers!(),
    ") \
     INSERT INTO federation_edu_outbox (destination, edu_type, content, queued_ts) \
     SELECT dest.server, 'm.signing_key_update', $2::jsonb, $3 \
     FROM dest WHERE dest.server <> $4 \
     RETURNING destination"
);

/// The destinations a [`DEVICE_UPDATE_SQL`] (or signing update) returned.
pub fn destinations_of(result: Option<&QueryResult>) -> Vec<String> {
    let mut out: Vec<String> = result
        .into_iter()
        .flat_map(|r| r.rows.iter())
        .filter_map(|r| r.get::<String>(0).ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Wakes the queues of `destinations` (after COMMIT).
pub fn kick(destinations: Vec<String>) {
    crate::federation::sender::kick_destinations(destinations);
}

/// Tells the other servers that `devices` of `user` changed (new, renamed,
/// or deleted: whatever the database says now), one update each, in one
/// transaction. `keys` replaces the stored keys of every device named
/// (their keys with signatures merged).
pub async fn announce_devices(
    db: &Pool,
    user: &str,
    devices: &[(String, Option<Value>)],
    ours: &str,
) -> Result<(), KeysError> {
    if devices.is_empty() {
        return Ok(());
    }
    let now = crate::primitives::unix_ms_i64();
    let yes = true;
    let params: Vec<[&dyn ToSql; 6]> = devices
        .iter()
        .map(|(d, k)| [&user as &dyn ToSql, d, k, &now, &ours, &yes])
        .collect();
    let statements: Vec<(&str, &[&dyn ToSql])> =
        params.iter().map(|p| (DEVICE_UPDATE_SQL, &p[..])).collect();
    let res = db.pipeline_transaction(&statements).await?;
    let mut dests: Vec<String> = res.iter().flat_map(|r| destinations_of(Some(r))).collect();
    dests.sort();
    dests.dedup();
    kick(dests);
    Ok(())
}

/// Tells the other servers of `user`'s new master and/or self-signing key
/// (`m.signing_key_update`; user-signing keys are private to the user).
pub async fn announce_signing_keys(
    db: &Pool,
    user: &str,
    master: Option<Value>,
    self_signing: Option<Value>,
    ours: &str,
) -> Result<(), KeysError> {
    if master.is_none() && self_signing.is_none() {
        return Ok(());
    }
    let mut content = serde_json::Map::new();
    content.insert("user_id".into(), user.into());
    if let Some(m) = master {
        content.insert("master_key".into(), m);
    }
    if let Some(s) = self_signing {
        content.insert("self_signing_key".into(), s);
    }
    let content = Value::Object(content);
    let now = crate::primitives::unix_ms_i64();
    let rows = db
        .query(SIGNING_UPDATE_SQL, &[&user, &content, &now, &ours])
        .await?;
    let mut dests: Vec<String> = rows.iter().filter_map(|r| r.get(0).ok()).collect();
    dests.sort();
    dests.dedup();
    kick(dests);
    Ok(())
}

/// The `stream_id` of `user`'s device list (0 before any change): what
/// `/user/devices` answers, read before the devices.
pub async fn stream_id(db: &Pool, user: &str) -> Result<i64, KeysError> {
    let row = db
        .query_opt(
            "SELECT stream_id FROM device_list_streams WHERE user_id = $1",
            &[&user],
        )
        .await?;
    Ok(match row {
        Some(r) => r.get(0)?,
        None => 0,
    })
}

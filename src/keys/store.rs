//! SQL of device, one-time and fallback keys (schema:
//! `migrations/0009_e2ee_keys.sql`). Keys are stored as the JSON text the
//! client uploaded: they are signed, so they go back out byte-equivalent
//! (canonical JSON re-serialises them identically).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{KeyCounts, KeysError};
use crate::db::{Pool, ToSql};
use crate::stream::notifier::Notifier;

/// One key of an upload: `algorithm`, `key_id`, the key object as JSON text.
#[derive(Debug, Clone)]
pub struct UploadKey {
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

/// A device's keys as `/keys/query` answers them.
#[derive(Debug, Clone)]
pub struct StoredDevice {
    pub user_id: String,
    pub device_id: String,
    pub keys: Value,
    pub display_name: Option<String>,
}

fn columns(keys: &[UploadKey]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let alg = keys.iter().map(|k| k.algorithm.as_str()).collect();
    let id = keys.iter().map(|k| k.key_id.as_str()).collect();
    let json = keys.iter().map(|k| k.json.as_str()).collect();
    (alg, id, json)
}

/// Stores an upload atomically (one round trip): device keys replace the
/// old ones, one-time keys already present are kept as they are (a retried
/// upload is harmless), a fallback key replaces the device's previous one
/// of its algorithm and is unused again. New device keys are recorded as a
/// device list change at `change` (`(stream_shard, stream_pos)`) and, in
/// the same transaction, queued as an `m.device_list_update` for the
/// servers sharing a room (`ours`: our server name). Returns the one-time
/// key counts.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    db: &Pool,
    ours: &str,
    user: &str,
    device: &str,
    device_keys: Option<String>,
    one_time: &[UploadKey],
    fallback: &[UploadKey],
    now: i64,
    change: (i32, i64),
) -> Result<KeyCounts, KeysError> {
    let (oa, oi, oj) = columns(one_time);
    let (fa, fi, fj) = columns(fallback);
    let dk: [&dyn ToSql; 4] = [&user, &device, &device_keys, &now];
    let otk: [&dyn ToSql; 5] = [&user, &device, &oa, &oi, &oj];
    let fbk: [&dyn ToSql; 5] = [&user, &device, &fa, &fi, &fj];
    let changed = device_keys.is_some();
    let chg: [&dyn ToSql; 4] = [&user, &change.0, &change.1, &changed];
    let no_keys: Option<Value> = None;
    let fed: [&dyn ToSql; 6] = [&user, &device, &no_keys, &now, &ours, &changed];
    let res = db
        .pipeline_transaction(&[
            (
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json, updated_ts) \
             SELECT $1, $2, $3::text, $4 WHERE $3::text IS NOT NULL \
             ON CONFLICT (user_id, device_id) DO UPDATE \
             SET key_json = excluded.key_json, updated_ts = excluded.updated_ts",
                &dk,
            ),
            (
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) \
             SELECT $1, $2, a, k, j FROM unnest($3::text[], $4::text[], $5::text[]) AS t(a, k, j) \
             ON CONFLICT DO NOTHING",
                &otk,
            ),
            (
                "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json) \
             SELECT $1, $2, a, k, j FROM unnest($3::text[], $4::text[], $5::text[]) AS t(a, k, j) \
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE \
             SET key_id = excluded.key_id, key_json = excluded.key_json, used = false",
                &fbk,
            ),
            (
                "INSERT INTO e2e_device_list_changes (user_id, stream_shard, stream_pos) \
             SELECT $1, $2, $3 WHERE $4",
                &chg,
            ),
            (super::device_lists::DEVICE_UPDATE_SQL, &fed),
        ])
        .await?;
    super::device_lists::kick(super::device_lists::destinations_of(res.get(4)));
    counts(db, user, device).await
}

/// Unclaimed one-time keys of a device per algorithm; `signed_curve25519`
/// is always present (clients read it to decide to upload more).
pub async fn counts(db: &Pool, user: &str, device: &str) -> Result<KeyCounts, KeysError> {
    let rows = db
        .query(
            "SELECT algorithm, count(*) FROM e2e_one_time_keys \
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
            &[&user, &device],
        )
        .await?;
    let mut out = KeyCounts::new();
    out.insert("signed_curve25519".to_owned(), 0);
    for r in rows {
        out.insert(r.get::<String>(0)?, r.get::<i64>(1)?);
    }
    Ok(out)
}

/// Algorithms of the device's fallback keys not handed out yet
/// (`device_unused_fallback_key_types`).
pub async fn unused_fallback(
    db: &Pool,
    user: &str,
    device: &str,
) -> Result<Vec<String>, KeysError> {
    let rows = db
        .query(
            "SELECT algorithm FROM e2e_fallback_keys \
             WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm",
            &[&user, &device],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(KeysError::from))
        .collect()
}

/// Device keys of `users` (all their devices), with display names.
pub async fn device_keys(db: &Pool, users: &[String]) -> Result<Vec<StoredDevice>, KeysError> {
    let rows = db
        .query(
            "SELECT k.user_id, k.device_id, k.key_json, d.display_name \
             FROM e2e_device_keys k JOIN devices d USING (user_id, device_id) \
             WHERE k.user_id = ANY($1)",
            &[&users],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let text: String = r.get(2)?;
        // Stored only after validation; a row that no longer parses is skipped.
        let Ok(keys) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        out.push(StoredDevice {
            user_id: r.get(0)?,
            device_id: r.get(1)?,
            keys,
            display_name: r.get(3)?,
        });
    }
    Ok(out)
}

/// Claims one key of `algorithm` of the device: a one-time key (deleted in
/// the same statement that picks it, skipping rows another claim holds, so
/// concurrent claims from any shard never get the same key), else the
/// fallback key (marked used, kept). `None` when the device has neither.
pub async fn claim(
    db: &Pool,
    user: &str,
    device: &str,
    algorithm: &str,
) -> Result<Option<(String, Value)>, KeysError> {
    let row = db
        .query_opt(
            "DELETE FROM e2e_one_time_keys WHERE ctid = ( \
                 SELECT ctid FROM e2e_one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING key_id, key_json",
            &[&user, &device, &algorithm],
        )
        .await?;
    let row = match row {
        Some(r) => Some(r),
        None => {
            db.query_opt(
                "UPDATE e2e_fallback_keys SET used = true \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 RETURNING key_id, key_json",
                &[&user, &device, &algorithm],
            )
            .await?
        }
    };
    let Some(r) = row else { return Ok(None) };
    let key_id: String = r.get(0)?;
    let text: String = r.get(1)?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Some((format!("{algorithm}:{key_id}"), json)))
}

/// `{user: {device: keys}}` for the `/keys/query` answer, `devices` per user
/// (empty: all of them), with `unsigned.device_display_name`.
pub fn query_answer(
    found: Vec<StoredDevice>,
    wanted: &BTreeMap<String, Vec<String>>,
) -> Map<String, Value> {
    let mut out: Map<String, Value> = wanted
        .keys()
        .map(|u| (u.clone(), Value::Object(Map::new())))
        .collect();
    for d in found {
        let Some(devs) = wanted.get(&d.user_id) else {
            continue;
        };
        if !devs.is_empty() && !devs.contains(&d.device_id) {
            continue;
        }
        let mut keys = d.keys;
        if let (Some(obj), Some(name)) = (keys.as_object_mut(), d.display_name) {
            let unsigned = obj
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(u) = unsigned.as_object_mut() {
                u.insert("device_display_name".to_owned(), Value::String(name));
            }
        }
        if let Some(Value::Object(m)) = out.get_mut(&d.user_id) {
            m.insert(d.device_id, keys);
        }
    }
    out
}

/// Users whose device keys (or cross-signing keys and signatures) changed
/// after `from` and at or before `to` (per-shard persisted positions) and
/// who are `me` or share a joined room with `me` (spec `GET
/// /keys/changes`). A change visible to one user only (a signature with
/// their user-signing key) is listed for that user alone.
pub async fn changed_users(
    db: &Pool,
    me: &str,
    from: &[i64],
    to: &[i64],
) -> Result<Vec<String>, KeysError> {
    let rows = db
        .query(
            "SELECT DISTINCT c.user_id FROM e2e_device_list_changes c \
             JOIN unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS w(lo, hi, n) \
               ON c.stream_shard = w.n - 1 \
             WHERE c.stream_pos > w.lo AND c.stream_pos <= w.hi \
               AND (c.visible_to IS NULL OR c.visible_to = $3) \
               AND (c.user_id = $3 OR c.visible_to = $3 OR EXISTS ( \
                 SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
                 WHERE a.type = 'm.room.member' AND a.state_key = $3 AND a.membership = 'join' \
                   AND b.type = 'm.room.member' AND b.state_key = c.user_id \
                   AND b.membership = 'join')) \
             ORDER BY c.user_id",
            &[&from, &to, &me],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(KeysError::from))
        .collect()
}

/// Users in a joined room with `user` (`user` included): whom a change of
/// `user`'s device list concerns.
pub async fn room_peers(db: &Pool, user: &str) -> Result<Vec<String>, KeysError> {
    let rows = db
        .query(
            "SELECT DISTINCT b.state_key FROM current_state a \
             JOIN current_state b ON a.room_id = b.room_id \
             WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join' \
               AND b.type = 'm.room.member' AND b.membership = 'join'",
            &[&user],
        )
        .await?;
    rows.iter()
        .map(|r| r.get::<String>(0).map_err(KeysError::from))
        .collect()
}

/// Records a device list change of `user` (a device deleted) at a stream
/// position of the user's shard.
pub async fn record_change(db: &Pool, user: &str, shard: i32, pos: i64) -> Result<(), KeysError> {
    db.execute(
        "INSERT INTO e2e_device_list_changes (user_id, stream_shard, stream_pos) \
         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&user, &shard, &pos],
    )
    .await?;
    Ok(())
}

/// Device list consequences of membership changes after `from` and at or
/// before `to` (spec "Tracking the device list for a user": `changed`
/// lists users who newly share a room with `me`, `left` those who share
/// none any more). Candidates are, as in Synapse, users who joined (for
/// `changed`) or left or were banned (for `left`) a room `me` is in or
/// left, and the members of rooms whose membership of `me` changed; each is
/// then checked against the joined rooms now. Returns `(changed, left)`.
pub async fn membership_device_lists(
    db: &Pool,
    me: &str,
    from: &[i64],
    to: &[i64],
) -> Result<(Vec<String>, Vec<String>), KeysError> {
    let rows = db
        .query(
            "WITH ev AS ( \
               SELECT e.room_id, e.state_key AS u, e.json->'content'->>'membership' AS m \
               FROM events e \
               JOIN unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS w(lo, hi, n) \
                 ON e.stream_shard = w.n - 1 \
               WHERE e.type = 'm.room.member' AND e.state_key IS NOT NULL \
                 AND e.stream_ordering > w.lo AND e.stream_ordering <= w.hi), \
             joined AS ( \
               SELECT room_id FROM current_state \
               WHERE type = 'm.room.member' AND state_key = $3 AND membership = 'join'), \
             mine AS ( \
               SELECT DISTINCT ev.room_id, (ev.room_id IN (SELECT room_id FROM joined)) AS now_in \
               FROM ev WHERE ev.u = $3), \
             cand AS ( \
               SELECT ev.u, true AS joining FROM ev \
               WHERE ev.m = 'join' AND ev.room_id IN (SELECT room_id FROM joined) \
               UNION \
               SELECT ev.u, false FROM ev \
               WHERE ev.m IN ('leave', 'ban') \
                 AND (ev.room_id IN (SELECT room_id FROM joined) \
                      OR ev.room_id IN (SELECT room_id FROM mine)) \
               UNION \
               SELECT cs.state_key, mine.now_in FROM current_state cs \
               JOIN mine ON cs.room_id = mine.room_id \
               WHERE cs.type = 'm.room.member' AND cs.membership = 'join') \
             SELECT c.u, bool_or(c.joining), EXISTS ( \
               SELECT 1 FROM current_state b JOIN joined j ON b.room_id = j.room_id \
               WHERE b.type = 'm.room.member' AND b.state_key = c.u AND b.membership = 'join') \
             FROM cand c WHERE c.u <> $3 GROUP BY c.u ORDER BY c.u",
            &[&from, &to, &me],
        )
        .await?;
    let (mut changed, mut left) = (Vec::new(), Vec::new());
    for r in rows {
        let user: String = r.get(0)?;
        let joining: bool = r.get(1)?;
        let shares: bool = r.get(2)?;
        if shares && joining {
            changed.push(user);
        } else if !shares {
            left.push(user);
        }
    }
    Ok((changed, left))
}

/// `(changed, left)` of `/sync` and `/keys/changes` between two tokens'
/// per-shard positions. Each query runs only where `notifier` says the
/// window can hold a row for it: in a big room nearly no woken sync's does,
/// and they were most of its database time.
pub async fn device_list_changes(
    db: &Pool,
    notifier: &Notifier,
    me: &str,
    from: &[i64],
    to: &[i64],
) -> Result<(Vec<String>, Vec<String>), KeysError> {
    let keys = async {
        if notifier.device_lists_changed_between(from, to) {
            changed_users(db, me, from, to).await
        } else {
            Ok(Vec::new())
        }
    };
    let members = async {
        if notifier.members_changed_between(from, to) {
            membership_device_lists(db, me, from, to).await
        } else {
            Ok((Vec::new(), Vec::new()))
        }
    };
    let (keys, members) = futures_util::future::join(keys, members).await;
    Ok(merge_device_lists(keys?, members?))
}

/// `(changed, left)` of `/sync` and `/keys/changes` from key changes and
/// [`membership_device_lists`]: a user both changed and left is left only
/// if no key change of theirs is visible (they share no room: the key
/// change query already required one).
pub fn merge_device_lists(
    key_changes: Vec<String>,
    (newly, left): (Vec<String>, Vec<String>),
) -> (Vec<String>, Vec<String>) {
    let mut changed = key_changes;
    changed.extend(newly);
    changed.sort();
    changed.dedup();
    let left = left
        .into_iter()
        .filter(|u| changed.binary_search(u).is_err())
        .collect();
    (changed, left)
}

//! Server-side key backups (client-server API "End-to-End Encryption" →
//! "Server-side key backups"): versions and the room keys stored in them
//! (schema: `migrations/0012_cross_signing_backup.sql`). The server never
//! reads `session_data` (it is encrypted for the backup's key); it keeps,
//! per session, the better of two uploads by the spec's rule, and moves the
//! version's `etag` whenever its keys change.
//!
//! Writes run on the user's shard under [`write_lock`]: checking the
//! current version and writing must not interleave with another write of
//! the user (a key upload racing a version deletion or creation).

use std::rc::Rc;

use futures_util::lock::Mutex;
use serde_json::{Map, Value};

use super::KeysError;
use crate::db::{Pool, ToSql};

thread_local! {
    static WRITE_LOCK: Rc<Mutex<()>> = Rc::new(Mutex::new(()));
}

/// The lock serialising backup writes on this shard (backup writes are
/// rare; a per-user map would buy nothing).
pub fn write_lock() -> Rc<Mutex<()>> {
    WRITE_LOCK.with(Rc::clone)
}

/// A backup version as `GET /room_keys/version` answers it.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: i64,
    pub count: i64,
}

/// One session's backed-up key (`KeyBackupData`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionKey {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: Value,
}

impl SessionKey {
    /// The `KeyBackupData` object.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        })
    }

    /// Whether `self` (newly uploaded) replaces `old` (spec "Server-side
    /// key backups": the verified key wins; then the lower
    /// `first_message_index`; then the lower `forwarded_count`). The SQL of
    /// [`put_keys`] applies the same rule; this is its reference.
    pub fn replaces(&self, old: &SessionKey) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

/// A version id from the path or query: a decimal number (anything else is
/// no version at all, as in Synapse).
pub fn parse_version(s: &str) -> Result<i64, KeysError> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| KeysError::NotFound("unknown backup version".into()))
}

fn bad(m: &str) -> KeysError {
    KeysError::InvalidParam(m.to_owned())
}

/// A `KeyBackupData` object of an upload.
pub fn parse_session(room_id: &str, session_id: &str, v: &Value) -> Result<SessionKey, KeysError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("key backup data must be an object"))?;
    let count = |f: &str| {
        obj.get(f)
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("first_message_index and forwarded_count must be integers >= 0"))
    };
    let is_verified = obj
        .get("is_verified")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad("is_verified must be a boolean"))?;
    let session_data = obj
        .get("session_data")
        .filter(|d| d.is_object())
        .cloned()
        .ok_or_else(|| bad("session_data must be an object"))?;
    Ok(SessionKey {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: count("first_message_index")?,
        forwarded_count: count("forwarded_count")?,
        is_verified,
        session_data,
    })
}

/// Creates a new version (numbered after every earlier one, deleted ones
/// included); it becomes the current one. Call under [`write_lock`].
pub async fn create(
    db: &Pool,
    user: &str,
    algorithm: &str,
    auth_data: &Value,
) -> Result<i64, KeysError> {
    let auth = auth_data.to_string();
    let row = db
        .query_one(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data) \
             SELECT $1, COALESCE(max(version), 0) + 1, $2, $3 \
             FROM e2e_room_keys_versions WHERE user_id = $1 \
             RETURNING version",
            &[&user, &algorithm, &auth],
        )
        .await?;
    Ok(row.get(0)?)
}

/// The current (newest not deleted) version number.
pub async fn current(db: &Pool, user: &str) -> Result<Option<i64>, KeysError> {
    let row = db
        .query_one(
            "SELECT max(version) FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted",
            &[&user],
        )
        .await?;
    Ok(row.get::<Option<i64>>(0)?)
}

/// A version (`None`: the current one) with its key count, if it exists
/// and is not deleted.
pub async fn get(
    db: &Pool,
    user: &str,
    version: Option<i64>,
) -> Result<Option<Version>, KeysError> {
    let row = db
        .query_opt(
            "SELECT v.version, v.algorithm, v.auth_data, v.etag, \
               (SELECT count(*) FROM e2e_room_keys k \
                WHERE k.user_id = v.user_id AND k.version = v.version) \
             FROM e2e_room_keys_versions v \
             WHERE v.user_id = $1 AND NOT v.deleted AND ($2::bigint IS NULL OR v.version = $2) \
             ORDER BY v.version DESC LIMIT 1",
            &[&user, &version],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let auth: String = r.get(2)?;
    Ok(Some(Version {
        version: r.get(0)?,
        algorithm: r.get(1)?,
        auth_data: serde_json::from_str(&auth).unwrap_or(Value::Object(Map::new())),
        etag: r.get(3)?,
        count: r.get(4)?,
    }))
}

/// Replaces a version's `auth_data` (the algorithm cannot change: spec
/// "`PUT /room_keys/version/{version}`"). Call under [`write_lock`].
pub async fn update(
    db: &Pool,
    user: &str,
    version: i64,
    algorithm: &str,
    auth_data: &Value,
) -> Result<(), KeysError> {
    let Some(old) = get(db, user, Some(version)).await? else {
        return Err(KeysError::NotFound("unknown backup version".into()));
    };
    if old.algorithm != algorithm {
        return Err(bad("the algorithm of a backup version cannot change"));
    }
    let auth = auth_data.to_string();
    db.execute(
        "UPDATE e2e_room_keys_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2",
        &[&user, &version, &auth],
    )
    .await?;
    Ok(())
}

/// Deletes a version and its keys; `false` when there was no such version.
/// Call under [`write_lock`].
pub async fn delete(db: &Pool, user: &str, version: i64) -> Result<bool, KeysError> {
    let res = db
        .pipeline_transaction(&[
            (
                "DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2",
                &[&user, &version],
            ),
            (
                "UPDATE e2e_room_keys_versions SET deleted = true \
                 WHERE user_id = $1 AND version = $2 AND NOT deleted",
                &[&user, &version],
            ),
        ])
        .await?;
    Ok(res.get(1).is_some_and(|r| r.rows_affected > 0))
}

/// `(etag, count)` of a version.
async fn etag_count(db: &Pool, user: &str, version: i64) -> Result<(i64, i64), KeysError> {
    let v = get(db, user, Some(version))
        .await?
        .ok_or_else(|| KeysError::NotFound("unknown backup version".into()))?;
    Ok((v.etag, v.count))
}

/// Stores uploaded keys into `version`, which must be the current one
/// (`M_WRONG_ROOM_KEYS_VERSION` otherwise, `M_NOT_FOUND` without any);
/// each replaces the stored key of its session only by the spec's rule
/// ([`SessionKey::replaces`]). The etag moves when anything was written.
/// Returns `(etag, count)`. Call under [`write_lock`].
pub async fn put_keys(
    db: &Pool,
    user: &str,
    version: i64,
    keys: &[SessionKey],
) -> Result<(i64, i64), KeysError> {
    match current(db, user).await? {
        None => return Err(KeysError::NotFound("no backup version exists".into())),
        Some(c) if c != version => return Err(KeysError::WrongBackupVersion(c.to_string())),
        Some(_) => {}
    }
    if !keys.is_empty() {
        let rooms: Vec<&str> = keys.iter().map(|k| k.room_id.as_str()).collect();
        let sessions: Vec<&str> = keys.iter().map(|k| k.session_id.as_str()).collect();
        let fmi: Vec<i64> = keys.iter().map(|k| k.first_message_index).collect();
        let fwd: Vec<i64> = keys.iter().map(|k| k.forwarded_count).collect();
        let ver: Vec<i64> = keys.iter().map(|k| i64::from(k.is_verified)).collect();
        let data: Vec<String> = keys.iter().map(|k| k.session_data.to_string()).collect();
        let params: [&dyn ToSql; 8] = [&user, &version, &rooms, &sessions, &fmi, &fwd, &ver, &data];
        db.execute(
            "WITH up AS ( \
               INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, \
                 first_message_index, forwarded_count, is_verified, session_data) \
               SELECT $1, $2, r, s, f, c, v <> 0, d \
               FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], \
                           $8::text[]) AS t(r, s, f, c, v, d) \
               ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                 first_message_index = excluded.first_message_index, \
                 forwarded_count = excluded.forwarded_count, \
                 is_verified = excluded.is_verified, session_data = excluded.session_data \
               WHERE (excluded.is_verified AND NOT e2e_room_keys.is_verified) \
                  OR (excluded.is_verified = e2e_room_keys.is_verified AND \
                      (excluded.first_message_index < e2e_room_keys.first_message_index \
                       OR (excluded.first_message_index = e2e_room_keys.first_message_index \
                           AND excluded.forwarded_count < e2e_room_keys.forwarded_count))) \
               RETURNING 1) \
             UPDATE e2e_room_keys_versions SET etag = etag + 1 \
             WHERE user_id = $1 AND version = $2 AND EXISTS (SELECT 1 FROM up)",
            &params,
        )
        .await?;
    }
    etag_count(db, user, version).await
}

/// Keys of `version` (`M_NOT_FOUND` without it), all of them or of one
/// room or one session.
pub async fn get_keys(
    db: &Pool,
    user: &str,
    version: i64,
    room: Option<&str>,
    session: Option<&str>,
) -> Result<Vec<SessionKey>, KeysError> {
    if get(db, user, Some(version)).await?.is_none() {
        return Err(KeysError::NotFound("unknown backup version".into()));
    }
    let (room, session) = (room.map(str::to_owned), session.map(str::to_owned));
    let rows = db
        .query(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, \
               session_data FROM e2e_room_keys \
             WHERE user_id = $1 AND version = $2 \
               AND ($3::text IS NULL OR room_id = $3) AND ($4::text IS NULL OR session_id = $4)",
            &[&user, &version, &room, &session],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let data: String = r.get(5)?;
        out.push(SessionKey {
            room_id: r.get(0)?,
            session_id: r.get(1)?,
            first_message_index: r.get(2)?,
            forwarded_count: r.get(3)?,
            is_verified: r.get(4)?,
            session_data: serde_json::from_str(&data).unwrap_or(Value::Object(Map::new())),
        });
    }
    Ok(out)
}

/// Deletes keys of `version` (all, a room's or a session's); returns
/// `(etag, count)`. Call under [`write_lock`].
pub async fn delete_keys(
    db: &Pool,
    user: &str,
    version: i64,
    room: Option<&str>,
    session: Option<&str>,
) -> Result<(i64, i64), KeysError> {
    if get(db, user, Some(version)).await?.is_none() {
        return Err(KeysError::NotFound("unknown backup version".into()));
    }
    let (room, session) = (room.map(str::to_owned), session.map(str::to_owned));
    db.execute(
        "WITH gone AS ( \
           DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 \
             AND ($3::text IS NULL OR room_id = $3) AND ($4::text IS NULL OR session_id = $4) \
           RETURNING 1) \
         UPDATE e2e_room_keys_versions SET etag = etag + 1 \
         WHERE user_id = $1 AND version = $2 AND EXISTS (SELECT 1 FROM gone)",
        &[&user, &version, &room, &session],
    )
    .await?;
    etag_count(db, user, version).await
}

/// `{"rooms": {room: {"sessions": {session: data}}}}` of `GET
/// /room_keys/keys`.
pub fn rooms_json(keys: Vec<SessionKey>) -> Value {
    let mut rooms: Map<String, Value> = Map::new();
    for k in keys {
        let room = rooms
            .entry(k.room_id.clone())
            .or_insert_with(|| serde_json::json!({"sessions": {}}));
        if let Some(s) = room.get_mut("sessions").and_then(Value::as_object_mut) {
            s.insert(k.session_id.clone(), k.to_json());
        }
    }
    serde_json::json!({ "rooms": rooms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: bool, fmi: i64, fwd: i64) -> SessionKey {
        SessionKey {
            room_id: "!r".into(),
            session_id: "s".into(),
            first_message_index: fmi,
            forwarded_count: fwd,
            is_verified: v,
            session_data: json!({}),
        }
    }

    #[test]
    fn the_spec_rule_for_which_key_is_kept() {
        // Verified wins whatever the indexes.
        assert!(key(true, 9, 9).replaces(&key(false, 0, 0)));
        assert!(!key(false, 0, 0).replaces(&key(true, 9, 9)));
        // Then the lower first_message_index.
        assert!(key(false, 1, 9).replaces(&key(false, 2, 0)));
        assert!(!key(false, 3, 0).replaces(&key(false, 2, 0)));
        // Then the lower forwarded_count; an equal key is kept.
        assert!(key(true, 2, 0).replaces(&key(true, 2, 1)));
        assert!(!key(true, 2, 1).replaces(&key(true, 2, 1)));
    }

    #[test]
    fn upload_shapes() {
        let ok = json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": true,
                        "session_data": {"ciphertext": "x"}});
        assert!(parse_session("!r", "s", &ok).is_ok());
        for bad in [
            json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": true, "session_data": {}}),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": "yes", "session_data": {}}),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": true, "session_data": "x"}),
            json!([]),
        ] {
            assert!(parse_session("!r", "s", &bad).is_err(), "{bad}");
        }
        assert!(parse_version("3").is_ok());
        assert!(parse_version("x").is_err());
        assert!(parse_version("0").is_err());
    }
}

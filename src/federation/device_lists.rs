//! Remote users' device lists (server-server "Device Management" and
//! "End-to-End Encryption"; client-server "Tracking the device list for a
//! user"): the `m.device_list_update` and `m.signing_key_update` EDUs of
//! other servers, kept durably in `federation_kept_edus` by the inbound
//! transaction, are applied here on the owner shard of the user they are
//! about (as other user data), one user at a time, in arrival order.
//!
//! An update whose `prev_id`s we have all seen (each at or below the
//! stream id we hold) is applied to the cache (`remote_devices`); a gap,
//! the first update of a user we do not track yet, or a cache marked
//! stale triggers a resync: `GET /user/devices/{userId}` at the user's
//! server replaces the cached list and the stream id (as Synapse). A
//! failed resync marks the cache stale. Either way the user is marked
//! changed (`e2e_device_list_changes`) so local users sharing a room with
//! them see them in `device_lists.changed` and query again. Updates of
//! users no local user shares a room with are dropped (and the user is no
//! longer tracked: their server stops telling us).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value};

use crate::db::{DbError, ToSql};
use crate::mesh::shard_for_user;
use crate::shard_state::{on_shard, Here, ShardState};
use crate::stream::{Change, Pos, Ticket, UserChange};

/// Kept EDUs read per round.
const BATCH: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum DeviceListError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Bad(String),
}

thread_local! {
    /// Users being processed on this shard; `true`: kicked meanwhile.
    static RUNNING: RefCell<HashMap<OwnedUserId, bool>> = RefCell::new(HashMap::new());
}

/// Wakes the processing of `user`'s kept EDUs on the user's shard.
pub async fn kick_user(state: &Rc<ShardState>, user: OwnedUserId) {
    let target = shard_for_user(&user, state.mesh.n_shards());
    let res = on_shard(&state.mesh, target, Here::Inline, move |s| async move {
        start(&s, user);
    })
    .await;
    if let Err(e) = res {
        // The rows stay; the user's shard picks them up at start.
        tracing::warn!(error = %e, "cannot wake a remote device list's processing");
    }
}

fn start(state: &Rc<ShardState>, user: OwnedUserId) {
    let run_now = RUNNING.with(|r| {
        let mut r = r.borrow_mut();
        match r.get_mut(&user) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                r.insert(user.clone(), false);
                true
            }
        }
    });
    if run_now {
        drop(monoio::spawn(run(state.clone(), user)));
    }
}

async fn run(state: Rc<ShardState>, user: OwnedUserId) {
    loop {
        if let Err(e) = process(&state, &user).await {
            // Rows not applied stay for the next kick or restart.
            tracing::warn!(%user, error = %e, "remote device list updates not applied");
        }
        let done = RUNNING.with(|r| {
            let mut r = r.borrow_mut();
            match r.get_mut(&user) {
                Some(again) if *again => {
                    *again = false;
                    false
                }
                _ => {
                    r.remove(&user);
                    true
                }
            }
        });
        if done {
            return;
        }
    }
}

/// At start: every user of this shard with kept EDUs.
pub async fn resume(state: &Rc<ShardState>) -> Result<usize, DeviceListError> {
    let rows = state
        .db
        .query(
            "SELECT DISTINCT content->>'user_id' FROM federation_kept_edus \
             WHERE edu_type IN ('m.device_list_update', 'm.signing_key_update')",
            &[],
        )
        .await?;
    let n = state.mesh.n_shards();
    let mut count = 0;
    for r in rows {
        let Some(u) = r.get::<Option<String>>(0)? else {
            continue;
        };
        let Ok(user) = OwnedUserId::try_from(u) else {
            continue;
        };
        if shard_for_user(&user, n) == state.info.id {
            start(state, user);
            count += 1;
        }
    }
    Ok(count)
}

async fn process(state: &Rc<ShardState>, user: &UserId) -> Result<(), DeviceListError> {
    loop {
        let rows = state
            .db
            .query(
                "SELECT seq, origin, edu_type, content FROM federation_kept_edus \
                 WHERE content->>'user_id' = $1 ORDER BY seq LIMIT $2",
                &[&user.as_str(), &BATCH],
            )
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            let seq: i64 = r.get(0)?;
            let origin: String = r.get(1)?;
            let kind: String = r.get(2)?;
            let content: Value = r.get(3)?;
            match apply(state, user, &origin, &kind, &content).await {
                Ok(()) => {}
                Err(DeviceListError::Bad(why)) => {
                    tracing::info!(%origin, %user, edu_type = %kind, %why, "dropped an EDU");
                }
                Err(e) => return Err(e),
            }
            state
                .db
                .execute("DELETE FROM federation_kept_edus WHERE seq = $1", &[&seq])
                .await?;
        }
    }
}

/// What we hold of a tracked user: `(stream_id, stale)`.
async fn tracked(state: &ShardState, user: &UserId) -> Result<Option<(i64, bool)>, DbError> {
    let row = state
        .db
        .query_opt(
            "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1",
            &[&user.as_str()],
        )
        .await?;
    row.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
}

/// Local users sharing a joined room with `user`.
async fn local_peers(state: &ShardState, user: &UserId) -> Result<Vec<OwnedUserId>, DbError> {
    let rows = state
        .db
        .query(
            "SELECT DISTINCT b.state_key FROM current_state a \
             JOIN current_state b ON a.room_id = b.room_id \
             WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join' \
               AND b.type = 'm.room.member' AND b.membership = 'join' \
               AND substring(b.state_key from position(':' in b.state_key) + 1) = $2",
            &[&user.as_str(), &state.config.server_name.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<String>(0).ok())
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .collect())
}

async fn apply(
    state: &Rc<ShardState>,
    user: &UserId,
    origin: &str,
    kind: &str,
    content: &Value,
) -> Result<(), DeviceListError> {
    if user.server_name().as_str() != origin {
        return Err(DeviceListError::Bad(format!("{user} is not of {origin}")));
    }
    let peers = local_peers(state, user).await?;
    if peers.is_empty() {
        // Nobody here needs them, and their server stops telling us:
        // whatever we hold would go stale unseen (Synapse unsubscribes).
        state
            .db
            .pipeline_transaction(&[
                (
                    "DELETE FROM remote_devices WHERE user_id = $1",
                    &[&user.as_str()],
                ),
                (
                    "DELETE FROM remote_device_lists WHERE user_id = $1",
                    &[&user.as_str()],
                ),
            ])
            .await?;
        return Ok(());
    }
    let held = tracked(state, user).await?;
    match kind {
        "m.device_list_update" => {
            let update = Update::parse(content)?;
            match held {
                Some((s, false)) if update.stream_id <= s => Ok(()), // seen
                Some((s, false)) if update.prev_ids.iter().all(|p| *p <= s) => {
                    apply_update(state, user, &update, peers).await
                }
                _ => resync(state, user, peers).await,
            }
        }
        "m.signing_key_update" => match held {
            Some((_, false)) => apply_signing(state, user, content, peers).await,
            _ => resync(state, user, peers).await,
        },
        other => Err(DeviceListError::Bad(format!(
            "not a device list EDU: {other}"
        ))),
    }
}

/// The fields of an `m.device_list_update` hearth uses.
#[derive(Debug, PartialEq)]
struct Update {
    device_id: String,
    stream_id: i64,
    prev_ids: Vec<i64>,
    deleted: bool,
    keys: Option<Value>,
    display_name: Option<String>,
}

impl Update {
    fn parse(content: &Value) -> Result<Update, DeviceListError> {
        let bad = |m: &str| DeviceListError::Bad(m.to_owned());
        let device_id = content
            .get("device_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no device_id"))?
            .to_owned();
        let stream_id = content
            .get("stream_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("no stream_id"))?;
        let prev_ids = match content.get("prev_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| bad("prev_id not integers")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("prev_id is not a list")),
        };
        let deleted = content.get("deleted").and_then(Value::as_bool) == Some(true);
        let user = content.get("user_id").and_then(Value::as_str);
        let keys = content
            .get("keys")
            .filter(|k| device_keys_of(k, user, &device_id))
            .cloned();
        let display_name = content
            .get("device_display_name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Update {
            device_id,
            stream_id,
            prev_ids,
            deleted,
            keys,
            display_name,
        })
    }
}

/// Whether `keys` are device keys of `user`'s `device` (a server cannot
/// plant keys under another id).
fn device_keys_of(keys: &Value, user: Option<&str>, device: &str) -> bool {
    keys.is_object()
        && keys.get("user_id").and_then(Value::as_str) == user
        && keys.get("device_id").and_then(Value::as_str) == Some(device)
}

/// The statement recording `user`'s change at the ticket's position.
const CHANGED_SQL: &str =
    "INSERT INTO e2e_device_list_changes (user_id, stream_shard, stream_pos) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

fn shard_of(state: &ShardState) -> Result<i32, DeviceListError> {
    i32::try_from(state.stream.shard()).map_err(|_| DeviceListError::Bad("shard id".into()))
}

async fn apply_update(
    state: &ShardState,
    user: &UserId,
    u: &Update,
    peers: Vec<OwnedUserId>,
) -> Result<(), DeviceListError> {
    let ticket = state.stream.allocate();
    let (uid, shard, pos, now) = (
        user.as_str(),
        shard_of(state)?,
        ticket.pos(),
        crate::primitives::unix_ms_i64(),
    );
    let device = u.device_id.as_str();
    let devices: (&str, &[&dyn ToSql]) = if u.deleted {
        (
            "DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2",
            &[&uid, &device],
        )
    } else {
        (
            "INSERT INTO remote_devices (user_id, device_id, keys, display_name) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO UPDATE \
             SET keys = COALESCE(excluded.keys, remote_devices.keys), \
                 display_name = excluded.display_name",
            &[&uid, &device, &u.keys, &u.display_name],
        )
    };
    state
        .db
        .pipeline_transaction(&[
            devices,
            (
                "UPDATE remote_device_lists SET stream_id = $2, updated_ts = $3 \
                 WHERE user_id = $1",
                &[&uid, &u.stream_id, &now],
            ),
            (CHANGED_SQL, &[&uid, &shard, &pos]),
        ])
        .await?;
    announce(ticket, peers).await;
    Ok(())
}

async fn apply_signing(
    state: &ShardState,
    user: &UserId,
    content: &Value,
    peers: Vec<OwnedUserId>,
) -> Result<(), DeviceListError> {
    let key = |field: &str| -> Option<Value> {
        content
            .get(field)
            .filter(|k| k.get("user_id").and_then(Value::as_str) == Some(user.as_str()))
            .cloned()
    };
    let (master, ssk) = (key("master_key"), key("self_signing_key"));
    if master.is_none() && ssk.is_none() {
        return Err(DeviceListError::Bad("no key of the user".into()));
    }
    let ticket = state.stream.allocate();
    let (uid, shard, pos, now) = (
        user.as_str(),
        shard_of(state)?,
        ticket.pos(),
        crate::primitives::unix_ms_i64(),
    );
    state
        .db
        .pipeline_transaction(&[
            (
                "UPDATE remote_device_lists SET master_key = COALESCE($2, master_key), \
                 self_signing_key = COALESCE($3, self_signing_key), updated_ts = $4 \
                 WHERE user_id = $1",
                &[&uid, &master, &ssk, &now],
            ),
            (CHANGED_SQL, &[&uid, &shard, &pos]),
        ])
        .await?;
    announce(ticket, peers).await;
    Ok(())
}

/// Replaces what we hold of `user` with their server's `/user/devices`
/// answer; on failure marks it stale (queries go to the server then).
async fn resync(
    state: &ShardState,
    user: &UserId,
    peers: Vec<OwnedUserId>,
) -> Result<(), DeviceListError> {
    let ticket = state.stream.allocate();
    let (uid, shard, pos, now) = (
        user.as_str(),
        shard_of(state)?,
        ticket.pos(),
        crate::primitives::unix_ms_i64(),
    );
    let server = user.server_name().as_str();
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        percent_encoding::utf8_percent_encode(uid, percent_encoding::NON_ALPHANUMERIC)
    );
    let answer = state
        .federation
        .request_json::<Map<String, Value>>(server, "GET", &path, None)
        .await
        .map_err(|e| e.to_string())
        .and_then(|a| Snapshot::parse(uid, a));
    match answer {
        Ok(snap) => {
            let ids: Vec<&str> = snap.devices.iter().map(|d| d.0.as_str()).collect();
            let keys: Vec<String> = snap.devices.iter().map(|d| d.1.clone()).collect();
            let names: Vec<&str> = snap.devices.iter().map(|d| d.2.as_str()).collect();
            state
                .db
                .pipeline_transaction(&[
                    ("DELETE FROM remote_devices WHERE user_id = $1", &[&uid]),
                    (
                        "INSERT INTO remote_devices (user_id, device_id, keys, display_name) \
                         SELECT $1, d, NULLIF(k, '')::jsonb, NULLIF(n, '') \
                         FROM unnest($2::text[], $3::text[], $4::text[]) AS t(d, k, n)",
                        &[&uid, &ids, &keys, &names],
                    ),
                    (
                        "INSERT INTO remote_device_lists (user_id, stream_id, stale, master_key, \
                           self_signing_key, updated_ts) VALUES ($1, $2, false, $3, $4, $5) \
                         ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, \
                           stale = false, master_key = excluded.master_key, \
                           self_signing_key = excluded.self_signing_key, \
                           updated_ts = excluded.updated_ts",
                        &[
                            &uid,
                            &snap.stream_id,
                            &snap.master,
                            &snap.self_signing,
                            &now,
                        ],
                    ),
                    (CHANGED_SQL, &[&uid, &shard, &pos]),
                ])
                .await?;
        }
        Err(why) => {
            tracing::info!(user = %uid, %why, "device list resync failed; cache marked stale");
            state
                .db
                .pipeline_transaction(&[
                    (
                        "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) \
                         VALUES ($1, 0, true, $2) \
                         ON CONFLICT (user_id) DO UPDATE SET stale = true, \
                           updated_ts = excluded.updated_ts",
                        &[&uid, &now],
                    ),
                    (CHANGED_SQL, &[&uid, &shard, &pos]),
                ])
                .await?;
        }
    }
    announce(ticket, peers).await;
    Ok(())
}

/// Reads an `m.device_list_update` EDU's content as [`apply`] does: the
/// entry point of the `federation_response` fuzz target (`fuzz/`), since
/// any server can send one.
#[doc(hidden)]
pub fn parse_device_list_update(content: &Value) -> Result<(), DeviceListError> {
    Update::parse(content).map(drop)
}

/// Reads a `/user/devices/{user}` answer as a resync does: the entry point
/// of the `federation_response` fuzz target.
#[doc(hidden)]
pub fn parse_user_devices(user: &str, answer: Map<String, Value>) -> Result<(), String> {
    Snapshot::parse(user, answer).map(drop)
}

/// A `/user/devices` answer, checked: `(device_id, keys JSON or "",
/// display name or "")` per device.
struct Snapshot {
    stream_id: i64,
    devices: Vec<(String, String, String)>,
    master: Option<Value>,
    self_signing: Option<Value>,
}

impl Snapshot {
    fn parse(user: &str, mut a: Map<String, Value>) -> Result<Snapshot, String> {
        if a.get("user_id").and_then(Value::as_str) != Some(user) {
            return Err("answer for another user".into());
        }
        let stream_id = a
            .get("stream_id")
            .and_then(Value::as_i64)
            .ok_or("no stream_id")?;
        let mut devices = Vec::new();
        if let Some(Value::Array(list)) = a.remove("devices") {
            for d in list {
                let Some(id) = d.get("device_id").and_then(Value::as_str) else {
                    continue;
                };
                let keys = d
                    .get("keys")
                    .filter(|k| device_keys_of(k, Some(user), id))
                    .map_or_else(String::new, Value::to_string);
                let name = d
                    .get("device_display_name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                devices.push((id.to_owned(), keys, name));
            }
        }
        let of_user =
            |k: Option<Value>| k.filter(|k| k.get("user_id").and_then(Value::as_str) == Some(user));
        Ok(Snapshot {
            stream_id,
            devices,
            master: of_user(a.remove("master_key")),
            self_signing: of_user(a.remove("self_signing_key")),
        })
    }
}

/// Wakes the local `peers` (their `device_lists.changed` now lists the
/// user); returns once every shard applied it.
async fn announce(ticket: Ticket, peers: Vec<OwnedUserId>) {
    let pos = ticket.pos();
    let changes = peers
        .into_iter()
        .map(|user_id| Change::User {
            user_id,
            pos: Pos::Persisted(pos),
            what: UserChange::Poke,
        })
        .collect();
    ticket.publish(changes).await;
}

/// After a membership event other than a join commits in `room`: its
/// remote members that no local user shares a joined room with any more
/// are no longer tracked. Their server stops sending us their updates
/// then, so a cache kept across the gap would look up to date while it
/// is not (Synapse unsubscribes them too); the next update resyncs.
pub fn after_leave(db: crate::db::Pool, room: ruma::OwnedRoomId, ours: String) {
    drop(monoio::spawn(async move {
        let res = db
            .execute(
                "WITH gone AS ( \
                   DELETE FROM remote_device_lists l \
                   WHERE l.user_id IN (SELECT state_key FROM current_state \
                                       WHERE room_id = $1 AND type = 'm.room.member') \
                     AND NOT EXISTS ( \
                       SELECT 1 FROM current_state a JOIN current_state b \
                         ON a.room_id = b.room_id \
                       WHERE a.type = 'm.room.member' AND a.state_key = l.user_id \
                         AND a.membership = 'join' AND b.type = 'm.room.member' \
                         AND b.membership = 'join' \
                         AND substring(b.state_key from position(':' in b.state_key) + 1) = $2) \
                   RETURNING user_id) \
                 DELETE FROM remote_devices WHERE user_id IN (SELECT user_id FROM gone)",
                &[&room.as_str(), &ours.as_str()],
            )
            .await;
        if let Err(e) = res {
            tracing::warn!(%room, error = %e, "remote device lists not untracked after a leave");
        }
    }));
}

/// A remote user's keys as we hold them, for `/keys/query`.
#[derive(Debug, Default)]
pub struct Cached {
    /// `device_id -> keys` (with `unsigned.device_display_name`).
    pub devices: Map<String, Value>,
    pub master: Option<Value>,
    pub self_signing: Option<Value>,
}

/// The cached keys of those of `users` we can answer for without asking
/// their server (Synapse does the same): tracked, not stale, and sharing
/// a joined room with a local user now (so their server keeps telling us
/// of changes).
pub async fn cached(
    db: &crate::db::Pool,
    ours: &str,
    users: &[String],
) -> Result<HashMap<String, Cached>, DeviceListError> {
    let mut out: HashMap<String, Cached> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = db
        .query(
            "SELECT l.user_id, l.master_key, l.self_signing_key FROM remote_device_lists l \
             WHERE l.user_id = ANY($1) AND NOT l.stale AND EXISTS ( \
               SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
               WHERE a.type = 'm.room.member' AND a.state_key = l.user_id \
                 AND a.membership = 'join' AND b.type = 'm.room.member' \
                 AND b.membership = 'join' \
                 AND substring(b.state_key from position(':' in b.state_key) + 1) = $2)",
            &[&users, &ours],
        )
        .await?;
    for r in rows {
        out.insert(
            r.get(0)?,
            Cached {
                devices: Map::new(),
                master: r.get(1)?,
                self_signing: r.get(2)?,
            },
        );
    }
    let found: Vec<String> = out.keys().cloned().collect();
    let rows = db
        .query(
            "SELECT user_id, device_id, keys, display_name FROM remote_devices \
             WHERE user_id = ANY($1) AND keys IS NOT NULL",
            &[&found],
        )
        .await?;
    for r in rows {
        let user: String = r.get(0)?;
        let device: String = r.get(1)?;
        let mut keys: Value = r.get(2)?;
        let name: Option<String> = r.get(3)?;
        if let (Some(o), Some(name)) = (keys.as_object_mut(), name) {
            let unsigned = o
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(u) = unsigned.as_object_mut() {
                u.insert("device_display_name".into(), Value::String(name));
            }
        }
        if let Some(c) = out.get_mut(&user) {
            c.devices.insert(device, keys);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_parse_and_foreign_keys_are_dropped() {
        let u = Update::parse(&json!({
            "user_id": "@a:x", "device_id": "D", "stream_id": 7, "prev_id": [5, 6],
            "keys": {"user_id": "@a:x", "device_id": "D"}, "device_display_name": "phone"
        }))
        .unwrap();
        assert_eq!(
            (u.stream_id, u.prev_ids.clone(), u.deleted),
            (7, vec![5, 6], false)
        );
        assert!(u.keys.is_some());
        let u = Update::parse(&json!({
            "user_id": "@a:x", "device_id": "D", "stream_id": 1,
            "keys": {"user_id": "@b:x", "device_id": "D"}
        }))
        .unwrap();
        assert!(u.keys.is_none() && u.prev_ids.is_empty());
        assert!(Update::parse(&json!({"device_id": "D"})).is_err());
        assert!(Update::parse(&json!({"device_id": "D", "stream_id": 1, "prev_id": "x"})).is_err());
    }

    #[test]
    fn snapshots_keep_only_the_users_keys() {
        let a = json!({"user_id": "@a:x", "stream_id": 3, "devices": [
            {"device_id": "D", "keys": {"user_id": "@a:x", "device_id": "D"}},
            {"device_id": "E", "keys": {"user_id": "@a:x", "device_id": "F"}},
        ], "master_key": {"user_id": "@b:x"}});
        let s = Snapshot::parse("@a:x", a.as_object().unwrap().clone()).unwrap();
        assert_eq!(s.stream_id, 3);
        assert!(!s.devices[0].1.is_empty() && s.devices[1].1.is_empty());
        assert!(s.master.is_none());
        assert!(Snapshot::parse("@b:x", a.as_object().unwrap().clone()).is_err());
    }
}

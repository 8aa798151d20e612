//! Presence (client-server API "Presence"), in memory on the user's shard.
//! A change is announced with an ephemeral position and the user's joined
//! rooms, so every shard caches it (`EphemeralCache`) and wakes the local members
//! of those rooms: whoever shares a room with the user may see it.
//!
//! As Synapse: `last_active_ago` counts from the last pro-active act
//! (setting `online`, a sync that marks the user online); `currently_active`
//! is true while online and active within the last minute; a user who never
//! set a presence is `offline`. Timers as Synapse's: a user with no sync
//! parked and none for [`SYNC_TIMEOUT_MS`] goes `offline`; an online user
//! idle for [`IDLE_TIMEOUT_MS`] goes `unavailable` ([`run_timers`]).

use std::sync::Arc;

use ruma::{OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use crate::db::Pool;
use crate::mesh::{shard_for_user, MeshEndpoint};
use crate::shard_state::ShardState;
use crate::stream::{Change, Pos, PresenceUpdate, UserChange};

use super::{on_shard, service, EphError};
use crate::primitives::unix_ms as now_ms;

/// Within this long after the last activity an online user is
/// `currently_active` (Synapse's `LAST_ACTIVE_GRANULARITY`).
pub const ACTIVE_WINDOW_MS: u64 = 60_000;

/// The presence states of the spec.
pub const STATES: [&str; 3] = ["online", "unavailable", "offline"];

/// A user's presence on their own shard.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPresence {
    pub presence: String,
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    /// Last sign of a client: a sync, or an explicit status change.
    pub last_seen_ts: u64,
}

/// No sync for this long (and none parked): `offline` (Synapse's
/// `SYNC_ONLINE_TIMEOUT`).
pub const SYNC_TIMEOUT_MS: u64 = 30_000;
/// Online without activity for this long: `unavailable` (Synapse's
/// `IDLE_TIMER`).
pub const IDLE_TIMEOUT_MS: u64 = 5 * 60_000;
/// How often a shard checks its users' presence timers.
const TIMER_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The presence timers' decisions at `now`: which users move to which
/// state. `syncing(user)`: whether the user has a sync parked right now.
pub fn expired(
    all: &std::collections::HashMap<OwnedUserId, LocalPresence>,
    now: u64,
    syncing: impl Fn(&UserId) -> bool,
) -> Vec<(OwnedUserId, &'static str)> {
    let mut out = Vec::new();
    for (user, p) in all {
        if p.presence == "offline" {
            continue;
        }
        if now.saturating_sub(p.last_seen_ts) >= SYNC_TIMEOUT_MS && !syncing(user) {
            out.push((user.clone(), "offline"));
        } else if p.presence == "online" && now.saturating_sub(p.last_active_ts) >= IDLE_TIMEOUT_MS
        {
            out.push((user.clone(), "unavailable"));
        }
    }
    out
}

/// This shard's presence timers (spawned with the shard's ephemeral
/// service). Runs until the shard stops.
pub async fn run_timers() {
    loop {
        monoio::time::sleep(TIMER_PERIOD).await;
        let Some(state) = crate::shard_state::current_shard() else {
            return;
        };
        let svc = service::get(&state);
        let now = now_ms();
        let changes = expired(&svc.presence.borrow(), now, |u| {
            state.notifier.is_waiting(u)
        });
        for (user, to) in changes {
            let Some(mut p) = svc.presence.borrow().get(&user).cloned() else {
                continue;
            };
            p.presence = to.to_owned();
            svc.presence.borrow_mut().insert(user.clone(), p.clone());
            announce(&state, &user, &p, now);
        }
    }
}

impl LocalPresence {
    fn currently_active(&self, now: u64) -> bool {
        self.presence == "online" && now.saturating_sub(self.last_active_ts) < ACTIVE_WINDOW_MS
    }
}

/// The `content` of an `m.presence` event (and the `GET …/status` body).
pub fn content(p: &PresenceUpdate, now: u64) -> Value {
    let mut c = Map::new();
    c.insert("presence".into(), json!(p.presence));
    if p.last_active_ts > 0 {
        c.insert(
            "last_active_ago".into(),
            json!(now.saturating_sub(p.last_active_ts)),
        );
    }
    if let Some(m) = &p.status_msg {
        c.insert("status_msg".into(), json!(m));
    }
    if p.presence == "online" {
        c.insert("currently_active".into(), json!(p.currently_active));
    }
    Value::Object(c)
}

/// Announces `p`; returns its ephemeral position.
fn announce(state: &ShardState, user: &OwnedUserId, p: &LocalPresence, now: u64) -> i64 {
    let rooms = state
        .notifier
        .rooms_of(user)
        .into_iter()
        .filter(|(_, m)| m == "join")
        .map(|(r, _)| r)
        .collect();
    let update = Arc::new(PresenceUpdate {
        presence: p.presence.clone(),
        status_msg: p.status_msg.clone(),
        last_active_ts: p.last_active_ts,
        currently_active: p.currently_active(now),
        rooms,
    });
    if user.server_name() == state.key.server_name && !update.rooms.is_empty() {
        federate(state, user, &update, now);
    }
    let user = user.clone();
    state.stream.publish_ephemeral(move |pos| {
        vec![Change::User {
            user_id: user,
            pos: Pos::Ephemeral(pos),
            what: UserChange::Presence(update),
        }]
    })
}

/// Server-server "Presence": a local user's change goes, as an
/// `m.presence` EDU (coalesced per user while queued), to every other
/// server joined to one of the user's rooms.
fn federate(state: &ShardState, user: &OwnedUserId, p: &PresenceUpdate, now: u64) {
    let db = state.db.clone();
    let ours = state.key.server_name.to_string();
    let rooms: Vec<String> = p.rooms.iter().map(|r| r.to_string()).collect();
    let mut c = content(p, now);
    c["user_id"] = json!(user);
    let edu = json!({"edu_type": "m.presence", "content": {"push": [c]}});
    let key = format!("presence {user}");
    drop(monoio::spawn(async move {
        let rows = match db
            .query(
                "SELECT DISTINCT state_key FROM current_state WHERE room_id = ANY($1) \
                 AND type = 'm.room.member' AND membership = 'join'",
                &[&rooms],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(error = %e, "cannot find servers for a presence update");
                return;
            }
        };
        let mut servers = std::collections::BTreeSet::new();
        for r in &rows {
            if let Ok(Ok(u)) = r.get::<String>(0).map(OwnedUserId::try_from) {
                if u.server_name().as_str() != ours {
                    servers.insert(u.server_name().to_string());
                }
            }
        }
        let servers: Vec<String> = servers.into_iter().collect();
        crate::federation::sender::queue_edu(&servers, Some(key), edu);
    }));
}

/// On the user's shard: applies a new state (`PUT …/status`, or a sync's
/// `set_presence` when `from_sync`) and announces it if anything a reader
/// sees changed (returning the announcement's ephemeral position).
fn apply(
    state: &ShardState,
    user: &OwnedUserId,
    presence: &str,
    status_msg: Option<Option<String>>,
    from_sync: bool,
) -> Option<i64> {
    let svc = service::get(state);
    let now = now_ms();
    // A sync repeating the user's presence (nearly every sync): only the
    // timestamps move and nothing visible changes, so update in place
    // (no clones, nothing announced) — what the general path below does.
    if from_sync && status_msg.is_none() {
        if let Some(p) = svc.presence.borrow_mut().get_mut(user) {
            if p.presence == presence && (presence != "online" || p.currently_active(now)) {
                p.last_seen_ts = now;
                if presence == "online" {
                    p.last_active_ts = now;
                }
                return None;
            }
        }
    }
    let old = svc.presence.borrow().get(user).cloned();
    let mut new = old.clone().unwrap_or(LocalPresence {
        presence: "offline".into(),
        status_msg: None,
        last_active_ts: 0,
        last_seen_ts: 0,
    });
    new.last_seen_ts = now;
    new.presence = presence.to_owned();
    if let Some(m) = status_msg {
        new.status_msg = m;
    }
    if presence == "online" {
        new.last_active_ts = now;
    }
    let visible_change = match &old {
        None => true,
        Some(o) => {
            o.presence != new.presence
                || o.status_msg != new.status_msg
                || o.currently_active(now) != new.currently_active(now)
                // An explicit PUT is always announced (Synapse notifies).
                || !from_sync
        }
    };
    svc.presence.borrow_mut().insert(user.clone(), new.clone());
    visible_change.then(|| announce(state, user, &new, now))
}

/// `PUT /presence/{userId}/status` (own user checked by the caller).
pub async fn set(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    presence: String,
    status_msg: Option<String>,
) -> Result<(), EphError> {
    if !STATES.contains(&presence.as_str()) {
        return Err(EphError::InvalidParam(format!(
            "presence must be one of {STATES:?}"
        )));
    }
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        if let Some(pos) = apply(&state, &user, &presence, Some(status_msg), false) {
            state.stream.wait_ephemeral(pos).await;
        }
        Ok(())
    })
    .await
}

/// A remote user's presence from an `m.presence` EDU (server-server
/// "Presence"), on the user's shard: kept and announced like a local
/// user's, so local users sharing a room see it. Not awaited on every
/// shard: the origin is not waiting for anyone's sync.
pub async fn set_remote(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    presence: String,
    status_msg: Option<String>,
) -> Result<(), EphError> {
    if !STATES.contains(&presence.as_str()) {
        return Err(EphError::InvalidParam(format!(
            "presence must be one of {STATES:?}"
        )));
    }
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        apply(&state, &user, &presence, Some(status_msg), false);
        Ok(())
    })
    .await
}

/// `/sync?set_presence=`: absent or `online` marks the user online,
/// `unavailable` idle, `offline` changes nothing (spec `/sync` parameter).
pub async fn set_from_sync(
    mesh: &MeshEndpoint,
    user: OwnedUserId,
    set_presence: Option<&str>,
) -> Result<(), EphError> {
    let presence = match set_presence {
        None | Some("online") => "online",
        Some("unavailable") => "unavailable",
        Some("offline") => return Ok(()),
        Some(other) => {
            return Err(EphError::InvalidParam(format!(
                "set_presence must be one of {STATES:?}, not {other:?}"
            )))
        }
    };
    let target = shard_for_user(&user, mesh.n_shards());
    on_shard(mesh, target, move |state| async move {
        // Wait until every shard has it: the sync's token then covers the
        // user's own change, and their next sync is not woken by it.
        if let Some(pos) = apply(&state, &user, presence, None, true) {
            state.stream.wait_ephemeral(pos).await;
        }
        Ok(())
    })
    .await
}

/// Whether `a` and `b` are joined to a common room (who may see whose
/// presence).
pub async fn share_a_room(db: &Pool, a: &UserId, b: &UserId) -> Result<bool, EphError> {
    let row = db
        .query_opt(
            "SELECT 1 FROM current_state x JOIN current_state y USING (room_id) \
             WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join' \
             AND y.type = 'm.room.member' AND y.state_key = $2 AND y.membership = 'join' \
             LIMIT 1",
            &[&a.as_str(), &b.as_str()],
        )
        .await?;
    Ok(row.is_some())
}

/// `GET /presence/{userId}/status`: 403 unless it is the requester or
/// someone sharing a room with them (as Synapse); `offline` when unknown.
pub async fn get(
    state: &ShardState,
    requester: &UserId,
    target: OwnedUserId,
) -> Result<Value, EphError> {
    if requester != target && !share_a_room(&state.db, requester, &target).await? {
        return Err(EphError::Forbidden(
            "You are not allowed to see their presence".into(),
        ));
    }
    let shard = shard_for_user(&target, state.mesh.n_shards());
    on_shard(&state.mesh, shard, move |state| async move {
        let now = now_ms();
        let svc = service::get(&state);
        let p = svc.presence.borrow().get(&target).cloned();
        Ok(match p {
            None => json!({"presence": "offline"}),
            Some(p) => content(
                &PresenceUpdate {
                    currently_active: p.currently_active(now),
                    presence: p.presence,
                    status_msg: p.status_msg,
                    last_active_ts: p.last_active_ts,
                    rooms: Vec::new(),
                },
                now,
            ),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_fields() {
        let p = PresenceUpdate {
            presence: "online".into(),
            status_msg: Some("busy".into()),
            last_active_ts: 1_000,
            currently_active: true,
            rooms: vec![],
        };
        let c = content(&p, 1_500);
        assert_eq!(
            c,
            json!({"presence": "online", "last_active_ago": 500,
                   "status_msg": "busy", "currently_active": true})
        );
        let off = PresenceUpdate {
            presence: "offline".into(),
            status_msg: None,
            last_active_ts: 0,
            currently_active: false,
            rooms: vec![],
        };
        assert_eq!(content(&off, 5), json!({"presence": "offline"}));
    }

    #[test]
    fn currently_active_needs_recent_activity() {
        let p = LocalPresence {
            presence: "online".into(),
            status_msg: None,
            last_active_ts: 1_000,
            last_seen_ts: 1_000,
        };
        assert!(p.currently_active(1_000 + ACTIVE_WINDOW_MS - 1));
        assert!(!p.currently_active(1_000 + ACTIVE_WINDOW_MS));
    }

    #[test]
    fn timers_move_users_offline_and_idle() {
        let uid = |s: &str| OwnedUserId::try_from(s).unwrap();
        let p = |presence: &str, active: u64, seen: u64| LocalPresence {
            presence: presence.into(),
            status_msg: None,
            last_active_ts: active,
            last_seen_ts: seen,
        };
        let mut all = std::collections::HashMap::new();
        let t = 10_000_000;
        all.insert(uid("@gone:x"), p("online", t - 40_000, t - 40_000));
        all.insert(uid("@parked:x"), p("online", t - 40_000, t - 40_000));
        all.insert(uid("@idle:x"), p("online", t - IDLE_TIMEOUT_MS, t - 1_000));
        all.insert(uid("@fresh:x"), p("online", t - 1_000, t - 1_000));
        all.insert(uid("@off:x"), p("offline", 0, 0));
        all.insert(
            uid("@away:x"),
            p("unavailable", t - IDLE_TIMEOUT_MS, t - 1_000),
        );
        let mut got = expired(&all, t, |u| u.as_str() == "@parked:x");
        got.sort();
        assert_eq!(
            got,
            vec![(uid("@gone:x"), "offline"), (uid("@idle:x"), "unavailable")]
        );
    }
}

//! Who may read what: room access for history endpoints and the history
//! visibility of each event (client-server "Room History Visibility").
//!
//! Semantics follow Synapse's `filter_events_for_client`: the state used
//! for an event is the state *after* it (our `events.snapshot_id`), with the
//! spec's two boundary rules — a `m.room.history_visibility` event is judged
//! by the less restrictive of its old and new value, the user's own member
//! event by the "more joined" of their old and new membership, and a user
//! may always see their own leave from join/invite. `shared` history is
//! readable to anyone currently joined or departed (not forgotten); a
//! peeking non-member (world_readable rooms) sees only `world_readable`
//! history. A departed user reads up to their leave event ([`Access::until`]).
//!
//! Per event we need only two state keys (the visibility and the user's
//! member event) at its snapshot: for all uncached snapshots of a page they
//! are read in one keyed query over the delta chains and remembered per
//! shard (snapshots never change), so a page costs at most one lookup.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::db::Pool;
use crate::events::RoomVersion;

use super::timeline::{RoomPos, TimelineEvent};
use super::RoomError;

const VIS_CACHE: usize = 8192;

/// Least to most restrictive (Synapse's `VISIBILITY_PRIORITY`).
const VISIBILITY_ORDER: [&str; 4] = ["world_readable", "shared", "invited", "joined"];
/// Most to least joined (Synapse's `MEMBERSHIP_PRIORITY`).
const MEMBERSHIP_ORDER: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];

/// How a user may read a room's history now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub version: RoomVersion,
    /// Current membership (`join`, `leave`, or `None`/other when peeking).
    pub membership: Option<String>,
    /// Reading a world_readable room without being (or having been) in it.
    pub peeking: bool,
    /// A departed user reads only up to their leave event.
    pub until: Option<RoomPos>,
}

impl Access {
    /// Clamps a position to what the user may read.
    pub fn clamp(&self, pos: RoomPos) -> RoomPos {
        self.until.map_or(pos, |u| u.min(pos))
    }
}

/// May `user` read the history of `room_id`? Joined users, departed users
/// who have not forgotten the room, and anyone for a world_readable room
/// (Synapse `check_user_in_room_or_world_readable` with departed users
/// allowed); otherwise 403, also for unknown rooms (as Synapse).
pub async fn check_access(db: &Pool, room_id: &str, user: &str) -> Result<Access, RoomError> {
    let row = db
        .query_opt(
            "SELECT r.room_version, m.membership, m.event_id, me.depth, me.stream_shard, \
                    me.stream_ordering, hv.json->'content'->>'history_visibility', \
                    f.member_event_id \
             FROM rooms r \
             LEFT JOIN current_state m ON m.room_id = r.room_id \
                  AND m.type = 'm.room.member' AND m.state_key = $2 \
             LEFT JOIN events me ON me.event_id = m.event_id \
             LEFT JOIN current_state h ON h.room_id = r.room_id \
                  AND h.type = 'm.room.history_visibility' AND h.state_key = '' \
             LEFT JOIN events hv ON hv.event_id = h.event_id \
             LEFT JOIN room_forgotten f ON f.room_id = r.room_id AND f.user_id = $2 \
             WHERE r.room_id = $1",
            &[&room_id, &user],
        )
        .await?;
    let forbidden = || RoomError::Forbidden(format!("{user} is not in room {room_id}"));
    let row = row.ok_or_else(forbidden)?;
    let version = RoomVersion::parse(row.get::<&str>(0)?)?;
    let membership: Option<String> = row.get(1)?;
    let member_event: Option<String> = row.get(2)?;
    let forgotten: Option<String> = row.get(7)?;
    let access = |peeking, until| Access {
        version,
        membership: membership.clone(),
        peeking,
        until,
    };
    match membership.as_deref() {
        Some("join") => return Ok(access(false, None)),
        Some("leave") if forgotten.is_none() || forgotten != member_event => {
            let until = RoomPos {
                depth: row.get::<Option<i64>>(3)?.unwrap_or_default(),
                shard: row.get::<Option<i32>>(4)?.unwrap_or_default(),
                stream: row.get::<Option<i64>>(5)?.unwrap_or_default(),
            };
            return Ok(access(false, Some(until)));
        }
        _ => {}
    }
    if row.get::<Option<&str>>(6)? == Some("world_readable") {
        return Ok(access(true, None));
    }
    Err(forbidden())
}

/// The two state values visibility needs at one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct VisState {
    history_visibility: Option<String>,
    membership: Option<String>,
}

thread_local! {
    /// `(snapshot_id, user)` → the values; snapshots are immutable.
    static VIS: RefCell<LruCache<(i64, String), VisState>> = RefCell::new(LruCache::new(
        NonZeroUsize::new(VIS_CACHE).unwrap_or(NonZeroUsize::MIN),
    ));
}

/// Looks `keys` up in snapshot `id`: `(type, state_key) → event_id` for
/// the keys present (`state::load_keys`).
pub async fn load_state_keys(
    db: &Pool,
    id: i64,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), String>, RoomError> {
    Ok(super::state::load_keys(db, id, Some(keys))
        .await?
        .into_iter()
        .collect())
}

/// `content.<field>` of each event (string values only).
async fn content_fields(
    db: &Pool,
    ids: &[String],
    field: &str,
) -> Result<HashMap<String, String>, RoomError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db
        .query(
            "SELECT event_id, json->'content'->>$2 FROM events WHERE event_id = ANY($1)",
            &[&ids, &field],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        if let Some(v) = r.get::<Option<String>>(1)? {
            out.insert(r.get(0)?, v);
        }
    }
    Ok(out)
}

/// The visibility values at each of `snapshots` for `user`: cached ones
/// from the per-shard cache, the rest in ONE query walking every missing
/// snapshot's delta chain at once.
async fn vis_states(
    db: &Pool,
    snapshots: &[i64],
    user: &str,
) -> Result<HashMap<i64, VisState>, RoomError> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    VIS.with(|c| {
        let mut c = c.borrow_mut();
        for &s in snapshots {
            match c.get(&(s, user.to_owned())) {
                Some(v) => {
                    out.insert(s, v.clone());
                }
                None if !missing.contains(&s) => missing.push(s),
                None => {}
            }
        }
    });
    if missing.is_empty() {
        return Ok(out);
    }
    let rows = db
        .query(
            "WITH RECURSIVE chain(root, id, parent, hop) AS ( \
                 SELECT snapshot_id, snapshot_id, parent_id, 0 FROM state_snapshots \
                 WHERE snapshot_id = ANY($1) \
                 UNION ALL \
                 SELECT c.root, s.snapshot_id, s.parent_id, c.hop + 1 \
                 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent) \
             SELECT l.root, l.type, CASE l.type \
                 WHEN 'm.room.member' THEN ev.json->'content'->>'membership' \
                 ELSE ev.json->'content'->>'history_visibility' END \
             FROM ( \
                 SELECT DISTINCT ON (c.root, e.type, e.state_key) \
                        c.root, e.type, e.state_key, e.event_id \
                 FROM chain c JOIN state_snapshot_entries e ON e.snapshot_id = c.id \
                 WHERE (e.type = 'm.room.member' AND e.state_key = $2) \
                    OR (e.type = 'm.room.history_visibility' AND e.state_key = '') \
                 ORDER BY c.root, e.type, e.state_key, c.hop) l \
             JOIN events ev ON ev.event_id = l.event_id",
            &[&missing, &user],
        )
        .await?;
    for &s in &missing {
        out.insert(s, VisState::default());
    }
    for r in rows {
        let root: i64 = r.get(0)?;
        let kind: &str = r.get(1)?;
        let value: Option<String> = r.get(2)?;
        let st = out.entry(root).or_default();
        if kind == "m.room.member" {
            st.membership = value;
        } else {
            st.history_visibility = value;
        }
    }
    VIS.with(|c| {
        let mut c = c.borrow_mut();
        for &s in &missing {
            if let Some(v) = out.get(&s) {
                c.put((s, user.to_owned()), v.clone());
            }
        }
    });
    Ok(out)
}

fn rank(order: &[&str], v: Option<&str>, default: &str) -> usize {
    let v = v.filter(|v| order.contains(v)).unwrap_or(default);
    order.iter().position(|o| *o == v).unwrap_or(order.len())
}

/// The visibility decision for one event, given the state values after it
/// and (for the boundary events) the replaced state event's value.
fn allowed(
    ev: &TimelineEvent,
    user: &str,
    peeking: bool,
    after: &VisState,
    prev_value: Option<&str>,
) -> bool {
    let kind = ev.pdu.kind.to_string();
    // Unknown or absent visibility counts as `shared` (spec "Server behaviour").
    let mut vis = rank(
        &VISIBILITY_ORDER,
        after.history_visibility.as_deref(),
        "shared",
    );
    if kind == "m.room.history_visibility" {
        vis = vis.min(rank(&VISIBILITY_ORDER, prev_value, "shared"));
    }
    let mut membership = after.membership.clone();
    if kind == "m.room.member" && ev.pdu.state_key.as_deref() == Some(user) {
        let new = ev.pdu.membership();
        let new_r = rank(&MEMBERSHIP_ORDER, new.as_deref(), "leave");
        let old_r = rank(&MEMBERSHIP_ORDER, prev_value, "leave");
        // One's own leave from join/invite (e.g. rejecting an invite).
        if new.as_deref() == Some("leave") && old_r <= 1 {
            return true;
        }
        membership = MEMBERSHIP_ORDER
            .get(new_r.min(old_r))
            .map(|m| (*m).to_owned());
    }
    if membership.as_deref() == Some("join") {
        return true;
    }
    match VISIBILITY_ORDER.get(vis).copied() {
        Some("joined") => false,
        Some("invited") => membership.as_deref() == Some("invite"),
        Some("shared") => !peeking,
        _ => true,
    }
}

/// Keeps the events `user` may see (order preserved). `peeking`: see
/// [`Access::peeking`].
pub async fn filter_events(
    db: &Pool,
    user: &str,
    peeking: bool,
    events: Vec<TimelineEvent>,
) -> Result<Vec<TimelineEvent>, RoomError> {
    let snapshots: Vec<i64> = events.iter().map(|e| e.snapshot_id).collect();
    let states = vis_states(db, &snapshots, user).await?;
    // Replaced values for the boundary rules: history visibility events
    // and the user's own member events.
    let boundary = |ev: &TimelineEvent| -> Option<(&'static str, String)> {
        let kind = ev.pdu.kind.to_string();
        let prev = ev.prev_state.clone()?;
        if kind == "m.room.history_visibility" {
            Some(("history_visibility", prev))
        } else if kind == "m.room.member" && ev.pdu.state_key.as_deref() == Some(user) {
            Some(("membership", prev))
        } else {
            None
        }
    };
    let mut prev_values: HashMap<String, String> = HashMap::new();
    for field in ["history_visibility", "membership"] {
        let ids: Vec<String> = events
            .iter()
            .filter_map(|e| boundary(e).filter(|(f, _)| *f == field).map(|(_, id)| id))
            .collect();
        prev_values.extend(content_fields(db, &ids, field).await?);
    }
    Ok(events
        .into_iter()
        .filter(|ev| {
            let after = states.get(&ev.snapshot_id).cloned().unwrap_or_default();
            let prev = boundary(ev).and_then(|(_, id)| prev_values.get(&id).map(String::as_str));
            allowed(ev, user, peeking, &after, prev)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::timeline::RoomPos;
    use crate::rooms::Pdu;
    use ruma::canonical_json::CanonicalJsonObject;
    use std::rc::Rc;

    fn ev(kind: &str, state_key: Option<&str>, content: serde_json::Value) -> TimelineEvent {
        let mut j = serde_json::json!({
            "room_id": "!r:h", "sender": "@a:h", "type": kind, "content": content,
            "origin_server_ts": 1, "depth": 2, "prev_events": [], "auth_events": [],
        });
        if let Some(k) = state_key {
            j["state_key"] = k.into();
        }
        let serde_json::Value::Object(m) = j else {
            unreachable!()
        };
        let json: CanonicalJsonObject = ruma::canonical_json::try_from_json_map(m).unwrap();
        let pdu = Pdu::from_json("$e".try_into().unwrap(), json, RoomVersion::V11).unwrap();
        TimelineEvent {
            pdu: Rc::new(pdu),
            version: RoomVersion::V11,
            pos: RoomPos::START,
            snapshot_id: 1,
            prev_state: None,
        }
    }

    fn st(hv: Option<&str>, m: Option<&str>) -> VisState {
        VisState {
            history_visibility: hv.map(Into::into),
            membership: m.map(Into::into),
        }
    }

    #[test]
    fn rules_by_visibility_and_membership() {
        let msg = ev("m.room.message", None, serde_json::json!({"body": "x"}));
        let u = "@u:h";
        // Joined at the event: always.
        assert!(allowed(
            &msg,
            u,
            false,
            &st(Some("joined"), Some("join")),
            None
        ));
        // joined: not a member then → no.
        assert!(!allowed(&msg, u, false, &st(Some("joined"), None), None));
        // invited: only if invited then.
        assert!(allowed(
            &msg,
            u,
            false,
            &st(Some("invited"), Some("invite")),
            None
        ));
        assert!(!allowed(&msg, u, false, &st(Some("invited"), None), None));
        // shared (also the default and for unknown values): members yes, peekers no.
        for hv in [Some("shared"), None, Some("bogus")] {
            assert!(allowed(&msg, u, false, &st(hv, None), None));
            assert!(!allowed(&msg, u, true, &st(hv, None), None));
        }
        // world_readable: everyone.
        assert!(allowed(
            &msg,
            u,
            true,
            &st(Some("world_readable"), None),
            None
        ));
    }

    #[test]
    fn boundary_events() {
        let u = "@u:h";
        // Visibility changed from world_readable to joined: peekers see it.
        let hv = ev(
            "m.room.history_visibility",
            Some(""),
            serde_json::json!({"history_visibility": "joined"}),
        );
        assert!(allowed(
            &hv,
            u,
            true,
            &st(Some("joined"), None),
            Some("world_readable")
        ));
        assert!(!allowed(
            &hv,
            u,
            true,
            &st(Some("joined"), None),
            Some("shared")
        ));
        // One's own join is visible even in a joined-only room.
        let join = ev(
            "m.room.member",
            Some(u),
            serde_json::json!({"membership": "join"}),
        );
        assert!(allowed(
            &join,
            u,
            false,
            &st(Some("joined"), Some("join")),
            None
        ));
        // One's own leave after join: visible although no longer joined.
        let leave = ev(
            "m.room.member",
            Some(u),
            serde_json::json!({"membership": "leave"}),
        );
        assert!(allowed(
            &leave,
            u,
            false,
            &st(Some("joined"), Some("leave")),
            Some("join")
        ));
        // Someone else's join in a joined-only room, user not in: hidden.
        let other = ev(
            "m.room.member",
            Some("@o:h"),
            serde_json::json!({"membership": "join"}),
        );
        assert!(!allowed(&other, u, false, &st(Some("joined"), None), None));
    }

    #[test]
    fn access_clamps_departed_users() {
        let p = RoomPos {
            depth: 5,
            shard: 0,
            stream: 9,
        };
        let a = Access {
            version: RoomVersion::V11,
            membership: Some("leave".into()),
            peeking: false,
            until: Some(p),
        };
        assert_eq!(a.clamp(RoomPos::END), p);
        assert_eq!(a.clamp(RoomPos::START), RoomPos::START);
    }
}
